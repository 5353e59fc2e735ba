//! Keeps the server and `docs/api/openapi.json` in agreement: the same paths and methods, and
//! request bodies that the router accepts or refuses exactly as the schemas say.

use serde_json::{Map, Value, json};

use super::router::{ROUTES, parse};

const DOC: &str = include_str!("../../../docs/api/openapi.json");

fn doc() -> Value {
    serde_json::from_str(DOC).expect("openapi.json is JSON")
}

fn schema<'a>(doc: &'a Value, op: &'a Value) -> Option<&'a Value> {
    let r = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].as_str()?;
    let name = r.rsplit('/').next()?;
    Some(&doc["components"]["schemas"][name])
}

/// A body with every property set to its example.
fn full_body(s: &Value) -> Map<String, Value> {
    s["properties"]
        .as_object()
        .expect("properties")
        .iter()
        .map(|(k, p)| (k.clone(), p["example"].clone()))
        .collect()
}

#[test]
fn documented_paths_and_methods_are_exactly_the_served_ones() {
    let d = doc();
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, ops) in d["paths"].as_object().expect("paths") {
        for method in ops.as_object().expect("operations").keys() {
            documented.push((path.clone(), method.to_uppercase()));
        }
    }
    documented.sort();
    let mut served: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(p, m)| ((*p).to_string(), (*m).to_string()))
        .collect();
    served.sort();
    assert_eq!(documented, served);
}

#[test]
fn request_bodies_follow_their_schemas() {
    let d = doc();
    for (path, ops) in d["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().expect("operations") {
            let method = method.to_uppercase();
            let Some(s) = schema(&d, op) else {
                assert!(
                    parse(&method, path, b"").is_ok(),
                    "{method} {path} needs no body"
                );
                continue;
            };
            let full = full_body(s);
            let accepted = |m: &Map<String, Value>| {
                parse(
                    &method,
                    path,
                    Value::Object(m.clone()).to_string().as_bytes(),
                )
                .is_ok()
            };
            assert!(
                accepted(&full),
                "{method} {path}: the documented example is refused"
            );
            // Each documented property alone with the required ones is accepted.
            let required: Vec<&str> = s["required"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for req in &required {
                let mut m = full.clone();
                m.remove(*req);
                assert!(
                    !accepted(&m),
                    "{method} {path}: accepted without required {req}"
                );
            }
            for (k, prop) in s["properties"].as_object().expect("properties") {
                if let Some(values) = prop["enum"].as_array() {
                    for v in values {
                        let mut m = full.clone();
                        m.insert(k.clone(), v.clone());
                        assert!(
                            accepted(&m),
                            "{method} {path}: {k}={v} is documented but refused"
                        );
                    }
                    let mut m = full.clone();
                    m.insert(k.clone(), json!("NotAValue"));
                    assert!(
                        !accepted(&m),
                        "{method} {path}: {k} accepts an undocumented value"
                    );
                }
            }
            let mut extra = full.clone();
            extra.insert("undocumented_field".into(), json!(1));
            assert!(
                !accepted(&extra),
                "{method} {path}: an undocumented field is accepted"
            );
        }
    }
}

#[test]
fn documented_responses_cover_success_and_refusal() {
    let d = doc();
    for (path, ops) in d["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().expect("operations") {
            let codes: Vec<&String> = op["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .collect();
            let success = if method == "get" { "200" } else { "204" };
            assert!(
                codes.iter().any(|c| *c == success),
                "{method} {path} documents no {success}"
            );
            assert!(
                codes.iter().any(|c| *c == "400"),
                "{method} {path} documents no 400"
            );
        }
    }
}
