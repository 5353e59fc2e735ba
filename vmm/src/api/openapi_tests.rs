//! Keeps the server and `docs/api/openapi.json` in agreement: the same paths and methods, and
//! request bodies that the router accepts or refuses exactly as the schemas say, down to the
//! JSON type of every field.

use serde_json::{Map, Value, json};

use super::router::{NOT_YET, ROUTES, parse};

const DOC: &str = include_str!("../../../docs/api/openapi.json");

fn doc() -> Value {
    serde_json::from_str(DOC).expect("openapi.json is JSON")
}

fn schema<'a>(doc: &'a Value, op: &'a Value) -> Option<&'a Value> {
    let r = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].as_str()?;
    let name = r.rsplit('/').next()?;
    Some(&doc["components"]["schemas"][name])
}

/// A body with every property that has an example set to it.
fn full_body(s: &Value) -> Map<String, Value> {
    s["properties"]
        .as_object()
        .expect("properties")
        .iter()
        .filter(|(_, p)| !p["example"].is_null())
        .map(|(k, p)| (k.clone(), p["example"].clone()))
        .collect()
}

/// Whether an operation is a Firecracker resource documented as not supported yet.
fn not_yet(op: &Value) -> bool {
    op["tags"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t == "not supported yet"))
}

/// The schema a property's value follows (`$ref`, or `allOf` with one `$ref`), resolved.
fn resolve<'a>(doc: &'a Value, prop: &'a Value) -> &'a Value {
    let r = prop["$ref"]
        .as_str()
        .or_else(|| prop["allOf"][0]["$ref"].as_str());
    match r.and_then(|r| r.rsplit('/').next()) {
        Some(name) => &doc["components"]["schemas"][name],
        None => prop,
    }
}

/// Values of other JSON types than the schema's, which must be refused in its place.
fn wrong_types(schema: &Value) -> Vec<Value> {
    if schema["type"] == "array" {
        // The one list field takes objects: neither null nor a list of other things.
        return vec![Value::Null, json!({}), json!("x"), json!([7]), json!([[]])];
    }
    let mut v = vec![Value::Null, json!([])];
    match schema["type"].as_str() {
        Some("string") => v.extend([json!(7), json!(true), json!({})]),
        Some("integer") => v.extend([json!("7"), json!(true), json!(1.5), json!({})]),
        Some("boolean") => v.extend([json!("true"), json!(1), json!({})]),
        Some("object") => {
            v.extend([json!("x"), json!(7), json!(false)]);
            // serde would read an object's fields by position from a list.
            let fields: Vec<Value> = schema["properties"]
                .as_object()
                .map(|p| p.values().map(|f| f["example"].clone()).collect())
                .unwrap_or_default();
            v.push(Value::Array(fields));
        }
        other => panic!("no wrong values for type {other:?}"),
    }
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        if let Some(name) = first.as_str() {
            // serde's other spelling of an enum name.
            v.push(json!({ name: null }));
        }
    }
    v
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
    let mut served: Vec<(String, String)> =
        ROUTES
            .iter()
            .map(|(p, m)| ((*p).to_string(), (*m).to_string()))
            .chain(NOT_YET.iter().flat_map(|(p, methods)| {
                methods.iter().map(|m| ((*p).to_string(), (*m).to_string()))
            }))
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
            if not_yet(op) {
                let e = parse(&method, path, b"{}").expect_err("not served");
                assert_eq!(e.status, 400, "{method} {path}");
                continue;
            }
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
fn fields_of_the_wrong_type_are_refused() {
    let d = doc();
    let mut checked = 0;
    for (path, ops) in d["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().expect("operations") {
            let method = method.to_uppercase();
            let Some(s) = schema(&d, op) else {
                continue;
            };
            let send = |v: &Value| parse(&method, path, v.to_string().as_bytes());
            let full = Value::Object(full_body(s));
            assert!(send(&full).is_ok(), "{method} {path}: example refused");
            for body in [json!([]), Value::Array(vec![full.clone()]), json!(null)] {
                let e = send(&body).expect_err("a body that is not an object");
                assert_eq!(e.status, 400, "{method} {path}: {body}");
            }
            // Each field of the body, and each field of an object field, in turn.
            let mut fields: Vec<(Vec<String>, &Value)> = Vec::new();
            for (k, prop) in s["properties"].as_object().expect("properties") {
                let inner = resolve(&d, prop);
                fields.push((vec![k.clone()], inner));
                for (ik, iprop) in inner["properties"].as_object().into_iter().flatten() {
                    fields.push((vec![k.clone(), ik.clone()], resolve(&d, iprop)));
                }
            }
            for (at, field) in fields {
                for wrong in wrong_types(field) {
                    let mut body = full.clone();
                    let mut slot = &mut body;
                    for k in &at[..at.len() - 1] {
                        let o = slot.as_object_mut().expect("object");
                        slot = o.entry(k.clone()).or_insert_with(|| json!({}));
                    }
                    slot.as_object_mut()
                        .expect("object")
                        .insert(at[at.len() - 1].clone(), wrong.clone());
                    let r = send(&body);
                    assert!(
                        r.as_ref().is_err_and(|e| e.status == 400),
                        "{method} {path}: {} = {wrong} is accepted",
                        at.join(".")
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 300, "only {checked} wrong values tried");
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
            if not_yet(op) {
                assert!(
                    codes.iter().all(|c| *c == "400" || *c == "413"),
                    "{method} {path}: a resource not supported yet only refuses"
                );
                continue;
            }
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
