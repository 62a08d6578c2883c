//! The subset of JSON Schema that tool arguments are checked against before a model's tool
//! call runs: `type` (one or a list), `properties`, `required`, `additionalProperties`
//! (boolean or schema), `items`, `enum`, `const`, `minimum`, `maximum`, `minLength`,
//! `maxLength`, `minItems`, `maxItems`. Other keywords are ignored (a tool's schema may say
//! more than is checked; what is checked is what models get wrong in practice). Pure and
//! bounded: the check visits each value once and stops at the first problem, which it
//! names by path (`$.order.items[2]: expected integer`).

use serde_json::Value;
use std::fmt::Write;

/// How deep a schema or value is followed; deeper parts are accepted unchecked.
const MAX_DEPTH: usize = 32;

/// `Ok` if `value` satisfies `schema`, else the first problem found.
pub fn validate(value: &Value, schema: &Value) -> Result<(), String> {
    let mut path = String::from("$");
    check(value, schema, &mut path, 0)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn has_type(v: &Value, wanted: &str) -> bool {
    let actual = type_name(v);
    actual == wanted
        || (wanted == "number" && actual == "integer")
        || (wanted == "integer" && v.as_f64().is_some_and(|f| f.fract() == 0.0))
}

fn check(v: &Value, schema: &Value, path: &mut String, depth: usize) -> Result<(), String> {
    let Some(s) = schema.as_object() else {
        // `true` or `{}`: anything; `false`: nothing.
        return match schema {
            Value::Bool(false) => Err(format!("{path}: no value is allowed here")),
            _ => Ok(()),
        };
    };
    if depth > MAX_DEPTH {
        return Ok(());
    }
    if let Some(t) = s.get("type") {
        let wanted: Vec<&str> = match t {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !wanted.is_empty() && !wanted.iter().any(|w| has_type(v, w)) {
            return Err(format!(
                "{path}: expected {}, got {}",
                wanted.join(" or "),
                type_name(v)
            ));
        }
    }
    if let Some(Value::Array(options)) = s.get("enum") {
        if !options.contains(v) {
            return Err(format!(
                "{path}: must be one of {}",
                Value::from(options.clone())
            ));
        }
    }
    if let Some(c) = s.get("const") {
        if c != v {
            return Err(format!("{path}: must be {c}"));
        }
    }
    match v {
        Value::Number(n) => numbers(n.as_f64().unwrap_or(0.0), s, path)?,
        Value::String(text) => lengths(text.chars().count(), "minLength", "maxLength", s, path)?,
        Value::Array(items) => {
            lengths(items.len(), "minItems", "maxItems", s, path)?;
            if let Some(item_schema) = s.get("items") {
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    let _ = write!(path, "[{i}]");
                    check(item, item_schema, path, depth + 1)?;
                    path.truncate(len);
                }
            }
        }
        Value::Object(fields) => {
            if let Some(Value::Array(required)) = s.get("required") {
                for name in required.iter().filter_map(Value::as_str) {
                    if !fields.contains_key(name) {
                        return Err(format!("{path}: missing required property {name:?}"));
                    }
                }
            }
            let props = s.get("properties").and_then(Value::as_object);
            for (name, field) in fields {
                let len = path.len();
                path.push('.');
                path.push_str(name);
                match props.and_then(|p| p.get(name)) {
                    Some(sub) => check(field, sub, path, depth + 1)?,
                    None => match s.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            return Err(format!("{path}: unknown property"));
                        }
                        Some(extra @ Value::Object(_)) => check(field, extra, path, depth + 1)?,
                        _ => {}
                    },
                }
                path.truncate(len);
            }
        }
        Value::Null | Value::Bool(_) => {}
    }
    Ok(())
}

fn numbers(n: f64, s: &serde_json::Map<String, Value>, path: &str) -> Result<(), String> {
    if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
        if n < min {
            return Err(format!("{path}: must be at least {min}"));
        }
    }
    if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
        if n > max {
            return Err(format!("{path}: must be at most {max}"));
        }
    }
    Ok(())
}

fn lengths(
    len: usize,
    min_key: &str,
    max_key: &str,
    s: &serde_json::Map<String, Value>,
    path: &str,
) -> Result<(), String> {
    if let Some(min) = s.get(min_key).and_then(Value::as_u64) {
        if (len as u64) < min {
            return Err(format!(
                "{path}: must have at least {min} elements or characters"
            ));
        }
    }
    if let Some(max) = s.get(max_key).and_then(Value::as_u64) {
        if (len as u64) > max {
            return Err(format!(
                "{path}: must have at most {max} elements or characters"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "order": {"type": "string", "minLength": 1},
                "amount": {"type": "number", "minimum": 0},
                "items": {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
                "mode": {"enum": ["fast", "slow"]}
            },
            "required": ["order"],
            "additionalProperties": false
        })
    }

    #[test]
    fn good_arguments_pass() {
        let s = order_schema();
        assert_eq!(validate(&json!({"order": "A-17"}), &s), Ok(()));
        assert_eq!(
            validate(
                &json!({"order": "A", "amount": 3, "items": [1, 2], "mode": "fast"}),
                &s
            ),
            Ok(())
        );
        assert_eq!(validate(&json!({"anything": [1]}), &json!({})), Ok(()));
        assert_eq!(validate(&json!(2.0), &json!({"type": "integer"})), Ok(()));
    }

    #[test]
    fn each_problem_is_named_by_its_path() {
        let s = order_schema();
        let e = |v: Value| validate(&v, &s).unwrap_err();
        assert_eq!(e(json!({})), "$: missing required property \"order\"");
        assert_eq!(e(json!([])), "$: expected object, got array");
        assert_eq!(
            e(json!({"order": 17})),
            "$.order: expected string, got integer"
        );
        assert_eq!(
            e(json!({"order": ""})),
            "$.order: must have at least 1 elements or characters"
        );
        assert_eq!(
            e(json!({"order": "a", "amount": -1})),
            "$.amount: must be at least 0"
        );
        assert_eq!(
            e(json!({"order": "a", "items": [1, "x"]})),
            "$.items[1]: expected integer, got string"
        );
        assert_eq!(
            e(json!({"order": "a", "items": [1, 2, 3, 4]})),
            "$.items: must have at most 3 elements or characters"
        );
        assert_eq!(
            e(json!({"order": "a", "mode": "warp"})),
            "$.mode: must be one of [\"fast\",\"slow\"]"
        );
        assert_eq!(
            e(json!({"order": "a", "extra": 1})),
            "$.extra: unknown property"
        );
        assert!(validate(&json!(1), &json!(false)).is_err());
    }

    #[test]
    fn deep_values_are_bounded() {
        let mut v = json!(1);
        let mut s = json!({"type": "integer"});
        for _ in 0..200 {
            v = json!([v]);
            s = json!({"type": "array", "items": s});
        }
        assert_eq!(validate(&v, &s), Ok(()));
    }
}
