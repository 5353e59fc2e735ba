use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct V1 {
    a: u32,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct V2 {
    a: u32,
    b: u64,
}

impl Versioned for V1 {
    const VERSION: u16 = 1;
    fn upgrade(version: u16, _: &[u8]) -> Result<Self, String> {
        Err(format!("version {version} never existed"))
    }
}

impl Versioned for V2 {
    const VERSION: u16 = 2;
    fn upgrade(version: u16, data: &[u8]) -> Result<Self, String> {
        match version {
            1 => decode_exact::<V1>(data).map(|v| V2 { a: v.a, b: 7 }),
            v => Err(format!("version {v} never existed")),
        }
    }
}

#[test]
fn round_trip() {
    let s = encode("thing", &V2 { a: 1, b: 2 }).unwrap();
    assert_eq!(s.version, 2);
    assert_eq!(decode::<V2>(&s).unwrap(), V2 { a: 1, b: 2 });
}

#[test]
fn older_version_converts_forward() {
    let s = encode("thing", &V1 { a: 5 }).unwrap();
    assert_eq!(decode::<V2>(&s).unwrap(), V2 { a: 5, b: 7 });
}

#[test]
fn newer_version_is_refused_naming_both() {
    let s = encode("thing", &V2 { a: 1, b: 2 }).unwrap();
    let e = decode::<V1>(&s).unwrap_err();
    assert_eq!(
        e,
        StateError::TooNew {
            name: "thing".into(),
            found: 2,
            known: 1
        }
    );
    let msg = e.to_string();
    assert!(
        msg.contains("thing") && msg.contains('2') && msg.contains('1'),
        "{msg}"
    );
}

#[test]
fn version_zero_and_trailing_bytes_are_refused() {
    let mut s = encode("thing", &V1 { a: 5 }).unwrap();
    s.version = 0;
    assert!(matches!(
        decode::<V1>(&s),
        Err(StateError::BadVersion { .. })
    ));
    s.version = 1;
    s.data.push(0);
    let e = decode::<V1>(&s).unwrap_err();
    assert!(e.to_string().contains("left over"), "{e}");
    s.data.clear();
    assert!(matches!(
        decode::<V1>(&s),
        Err(StateError::Malformed { .. })
    ));
}

#[test]
fn set_takes_each_section_once_and_names_leftovers() {
    let mut set = SectionSet::new();
    set.push(encode("a", &V1 { a: 1 }).unwrap()).unwrap();
    set.push(encode("b", &V1 { a: 2 }).unwrap()).unwrap();
    assert_eq!(
        set.push(encode("a", &V1 { a: 3 }).unwrap()),
        Err(StateError::Duplicate("a".into()))
    );
    assert_eq!(set.take_decoded::<V1>("a").unwrap(), V1 { a: 1 });
    assert_eq!(set.take("a"), Err(StateError::Missing("a".into())));
    assert_eq!(set.clone().finish(), Err(StateError::Unknown("b".into())));
    set.take("b").unwrap();
    assert_eq!(set.finish(), Ok(()));
}
