//! `${input.a.b}` and `${steps.ID.output.x}` references inside step arguments: finding them
//! (for validation) and resolving them against the input and recorded step outputs (at run
//! time). A string that is exactly one reference is replaced by the referenced JSON value
//! (keeping its type); otherwise references are interpolated as text.

use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub enum Reference {
    Input(Vec<String>),
    Step { step: String, path: Vec<String> },
}

/// Calls `f(json_path, text)` for every string inside `v`, with paths like `.body.items[2]`.
pub fn visit_strings(v: &Value, f: &mut dyn FnMut(&str, &str)) {
    fn go(v: &Value, path: &mut String, f: &mut dyn FnMut(&str, &str)) {
        match v {
            Value::String(s) => f(path, s),
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    go(x, path, f);
                    path.truncate(len);
                }
            }
            Value::Object(o) => {
                for (k, x) in o {
                    let len = path.len();
                    path.push('.');
                    path.push_str(k);
                    go(x, path, f);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }
    go(v, &mut String::new(), f)
}

fn spans(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(start) = text[i..].find("${") {
        let s = i + start;
        match text[s..].find('}') {
            Some(end) => {
                out.push((s, s + end + 1));
                i = s + end + 1;
            }
            None => {
                out.push((s, text.len()));
                break;
            }
        }
    }
    out
}

fn parse(inner: &str) -> Result<Reference, String> {
    let segs: Vec<String> = inner.split('.').map(|s| s.to_string()).collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err(format!("bad reference ${{{inner}}}: empty path segment"));
    }
    match segs[0].as_str() {
        "input" => Ok(Reference::Input(segs[1..].to_vec())),
        "steps" => {
            if segs.len() < 3 || segs[2] != "output" {
                return Err(format!(
                    "bad reference ${{{inner}}}: use ${{steps.ID.output...}}"
                ));
            }
            Ok(Reference::Step {
                step: segs[1].clone(),
                path: segs[3..].to_vec(),
            })
        }
        other => Err(format!(
            "bad reference ${{{inner}}}: {other:?} is not a root; use input or steps"
        )),
    }
}

/// Every reference in one string, parsed (or an error message for a malformed one).
pub fn references(text: &str) -> Vec<Result<Reference, String>> {
    spans(text)
        .into_iter()
        .map(|(s, e)| {
            let raw = &text[s..e];
            if !raw.ends_with('}') {
                return Err(format!("unterminated reference in {text:?}"));
            }
            parse(&raw[2..raw.len() - 1])
        })
        .collect()
}

fn lookup<'a>(mut v: &'a Value, path: &[String]) -> Option<&'a Value> {
    for seg in path {
        v = match v {
            Value::Object(o) => o.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Resolves every reference in `args`. A reference to a missing path is an error naming it.
pub fn resolve(
    args: &Value,
    input: &Value,
    outputs: &BTreeMap<String, Value>,
) -> Result<Value, String> {
    let get = |r: &Reference| -> Result<Value, String> {
        let found = match r {
            Reference::Input(p) => lookup(input, p),
            Reference::Step { step, path } => outputs.get(step).and_then(|o| lookup(o, path)),
        };
        found
            .cloned()
            .ok_or_else(|| format!("reference {r:?} resolves to nothing"))
    };
    Ok(match args {
        Value::String(s) => {
            let sp = spans(s);
            if sp.len() == 1 && sp[0] == (0, s.len()) && s.ends_with('}') {
                get(&parse(&s[2..s.len() - 1])?)?
            } else if sp.is_empty() {
                args.clone()
            } else {
                let mut out = String::new();
                let mut last = 0;
                for (a, b) in sp {
                    out.push_str(&s[last..a]);
                    let v = get(&parse(s[a + 2..b].trim_end_matches('}'))?)?;
                    match v {
                        Value::String(t) => out.push_str(&t),
                        other => out.push_str(&other.to_string()),
                    }
                    last = b;
                }
                out.push_str(&s[last..]);
                Value::String(out)
            }
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| resolve(x, input, outputs))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), resolve(x, input, outputs)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whole_string_keeps_type_and_interpolation_makes_text() {
        let mut outs = BTreeMap::new();
        outs.insert("a".to_string(), json!({"n": 5, "list": [1, 2]}));
        let args = json!({"n": "${steps.a.output.n}", "s": "n=${steps.a.output.n}/${input.o}", "i": "${steps.a.output.list.1}"});
        let r = resolve(&args, &json!({"o": "x"}), &outs).unwrap();
        assert_eq!(r, json!({"n": 5, "s": "n=5/x", "i": 2}));
        assert!(resolve(&json!("${input.missing}"), &json!({}), &outs).is_err());
    }
}
