//! `${input.a.b}` and `${steps.ID.output.x}` references inside step arguments: finding them
//! (for validation) and resolving them against the input and recorded step outputs (at run
//! time). A string that is exactly one reference is replaced by the referenced JSON value
//! (keeping its type); otherwise references are interpolated as text. Every message names a
//! reference as the user wrote it (`${steps.a.output.x}`), cut to a bounded length.

use crate::error::{quoted, shorten};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::{self, Write};

#[derive(Debug, Clone, PartialEq)]
pub enum Reference {
    Input(Vec<String>),
    Step { step: String, path: Vec<String> },
}

/// Renders the reference as written in a plan: `${input.a.b}`, `${steps.ID.output.x}`.
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = match self {
            Reference::Input(path) => {
                f.write_str("${input")?;
                path
            }
            Reference::Step { step, path } => {
                write!(f, "${{steps.{step}.output")?;
                path
            }
        };
        for seg in path {
            write!(f, ".{seg}")?;
        }
        f.write_str("}")
    }
}

/// Calls `f(json_path, text)` for every string inside `v`, with paths like `.body.items[2]`.
pub fn visit_strings(v: &Value, f: &mut dyn FnMut(&str, &str)) {
    fn go(v: &Value, path: &mut String, f: &mut dyn FnMut(&str, &str)) {
        match v {
            Value::String(s) => f(path, s),
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    let len = path.len();
                    // Writing to a String cannot fail.
                    let _ = write!(path, "[{i}]");
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

/// The byte ranges of the `${…}` spans in a text, in order. An unterminated `${` runs to the
/// end of the text.
struct Spans<'a> {
    text: &'a str,
    at: usize,
}

impl Iterator for Spans<'_> {
    type Item = (usize, usize);
    fn next(&mut self) -> Option<(usize, usize)> {
        let start = self.at + self.text.get(self.at..)?.find("${")?;
        let end = match self.text[start..].find('}') {
            Some(close) => start + close + 1,
            None => self.text.len(),
        };
        // Past the end: the next call finds nothing.
        self.at = if end == self.text.len() { end + 1 } else { end };
        Some((start, end))
    }
}

fn spans(text: &str) -> Spans<'_> {
    Spans { text, at: 0 }
}

/// How many `${…}` references (well-formed or not) a text holds: what the plan's
/// reference cap counts. Allocates nothing.
pub fn count_references(text: &str) -> usize {
    spans(text).count()
}

fn parse(inner: &str) -> Result<Reference, String> {
    let bad = |why: &str| format!("bad reference {}: {why}", shorten(&format!("${{{inner}}}")));
    let segs: Vec<&str> = inner.split('.').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err(bad("empty path segment"));
    }
    let owned = |segs: &[&str]| segs.iter().map(|s| s.to_string()).collect();
    match segs[0] {
        "input" => Ok(Reference::Input(owned(&segs[1..]))),
        "steps" => {
            if segs.len() < 3 || segs[2] != "output" {
                return Err(bad("use ${steps.ID.output...}"));
            }
            Ok(Reference::Step {
                step: segs[1].to_string(),
                path: owned(&segs[3..]),
            })
        }
        other => Err(bad(&format!(
            "{} is not a root; use input or steps",
            quoted(other)
        ))),
    }
}

/// Every reference in one string, parsed (or an error message for a malformed one).
pub fn references(text: &str) -> Vec<Result<Reference, String>> {
    spans(text)
        .map(|(s, e)| {
            let raw = &text[s..e];
            if !raw.ends_with('}') {
                return Err(format!(
                    "unterminated reference {} (no closing }})",
                    quoted(raw)
                ));
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

/// Where `${steps.ID.output…}` references find a step's recorded output. A job's state
/// answers directly (`JobState`), so resolving copies only the values referenced, not
/// every output of the job on every step.
pub trait StepOutputs {
    /// The recorded output of succeeded step `step`, if any.
    fn output(&self, step: &str) -> Option<&Value>;
}

impl StepOutputs for BTreeMap<String, Value> {
    fn output(&self, step: &str) -> Option<&Value> {
        self.get(step)
    }
}

/// Resolves every reference in `args`. A reference to a missing path is an error naming it.
pub fn resolve<O: StepOutputs + ?Sized>(
    args: &Value,
    input: &Value,
    outputs: &O,
) -> Result<Value, String> {
    let get = |r: &Reference| -> Result<Value, String> {
        let found = match r {
            Reference::Input(p) => lookup(input, p),
            Reference::Step { step, path } => outputs.output(step).and_then(|o| lookup(o, path)),
        };
        found
            .cloned()
            .ok_or_else(|| format!("reference {} resolves to nothing", shorten(&r.to_string())))
    };
    Ok(match args {
        Value::String(s) => {
            let sp: Vec<(usize, usize)> = spans(s).collect();
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

    #[test]
    fn display_renders_what_the_user_wrote() {
        for text in [
            "${input}",
            "${input.order}",
            "${input.a.0.b}",
            "${steps.a.output}",
            "${steps.fetch-1.output.body.items.2}",
            "${steps.a.output.__proto__}",
        ] {
            let parsed = references(text);
            assert_eq!(parsed.len(), 1, "{text}");
            let r = parsed[0].as_ref().unwrap();
            assert_eq!(r.to_string(), text);
        }
    }

    #[test]
    fn resolve_errors_name_the_reference_as_written() {
        let mut outs = BTreeMap::new();
        outs.insert("a".to_string(), json!({"n": 1}));
        let e = resolve(&json!("${steps.a.output.__proto__}"), &json!({}), &outs).unwrap_err();
        assert_eq!(
            e,
            "reference ${steps.a.output.__proto__} resolves to nothing"
        );
        let e = resolve(&json!({"k": "x=${input.a.b}"}), &json!({"a": {}}), &outs).unwrap_err();
        assert_eq!(e, "reference ${input.a.b} resolves to nothing");
        let long = format!("${{input.{}}}", "k".repeat(10_000));
        let e = resolve(&json!(long), &json!({}), &outs).unwrap_err();
        assert!(e.len() < 120 && e.contains('…'), "{e}");
    }

    #[test]
    fn malformed_references_are_named_briefly() {
        let cases = [
            (
                "${input..x}",
                "bad reference ${input..x}: empty path segment",
            ),
            (
                "${steps.a.out}",
                "bad reference ${steps.a.out}: use ${steps.ID.output...}",
            ),
            (
                "${env.HOME}",
                "bad reference ${env.HOME}: \"env\" is not a root; use input or steps",
            ),
            (
                "x ${input.a",
                "unterminated reference \"${input.a\" (no closing })",
            ),
        ];
        for (text, want) in cases {
            let got = references(text);
            assert_eq!(got, vec![Err(want.to_string())], "{text}");
        }
        let long = format!("${{nope{}}}", "x".repeat(100_000));
        let got = references(&long);
        let Err(m) = &got[0] else { panic!("{got:?}") };
        assert!(m.len() < 300, "{} bytes", m.len());
    }

    #[test]
    fn spans_are_counted_like_they_are_parsed() {
        for (text, n) in [
            ("", 0),
            ("plain", 0),
            ("${a}", 1),
            ("${a}${b} ${c", 3),
            ("${a${b}", 1),
            ("}${", 1),
        ] {
            assert_eq!(count_references(text), n, "{text}");
            assert_eq!(references(text).len(), n, "{text}");
        }
    }
}
