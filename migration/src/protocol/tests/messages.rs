//! Messages: every one round-trips, every malformed payload is refused naming the message,
//! and what cannot be put on the wire is refused before anything is written.

use super::*;

fn err(bytes: &[u8]) -> String {
    read_message(&mut &bytes[..])
        .expect_err("refused")
        .to_string()
}

#[test]
fn every_message_round_trips() {
    let all = one_of_each();
    let mut kinds: Vec<MessageType> = all.iter().map(Message::kind).collect();
    kinds.sort_by_key(|k| *k as u16);
    assert_eq!(kinds, MessageType::ALL, "one of each type");
    for m in &all {
        let f = encode_message(m).unwrap();
        assert_eq!(
            decode_message(&f).unwrap(),
            (m.clone(), f.len()),
            "{}",
            m.name()
        );
        let mut w = Vec::new();
        write_message(&mut w, m).unwrap();
        assert_eq!(w, f);
        assert_eq!(read_message(&mut &w[..]).unwrap(), *m);
    }
    // A stream of them reads back in order, then ends cleanly.
    let (got, e) = read_all(&stream_of(&all));
    assert_eq!(got, all);
    assert!(matches!(e, ProtocolError::Closed));
}

#[test]
fn the_type_numbers_are_fixed() {
    let numbers: Vec<(u16, &str)> = MessageType::ALL
        .iter()
        .map(|t| (*t as u16, t.name()))
        .collect();
    assert_eq!(
        numbers,
        [
            (1, "Hello"),
            (2, "Welcome"),
            (3, "Refuse"),
            (4, "Preflight"),
            (5, "Ready"),
            (6, "Memory"),
            (7, "RoundEnd"),
            (8, "State"),
            (9, "Loaded"),
            (10, "Commit"),
            (11, "Running"),
            (12, "Abort"),
            (13, "Cancelled"),
        ]
    );
    for t in MessageType::ALL {
        assert_eq!(MessageType::from_u16(t as u16), Some(t));
    }
    assert_eq!(MessageType::from_u16(14), None);
}

#[test]
fn payload_layouts_are_as_documented() {
    let payload = |m: &Message| encode_message(m).unwrap()[HEADER_LEN..].to_vec();
    let hello = payload(&Message::Hello {
        protocol_version: 3,
        min_protocol_version: 2,
        vmm_version: "v9".to_string(),
        arch: 0xAA64,
    });
    assert_eq!(
        hello,
        [3, 0, 0, 0, 2, 0, 0, 0, 0x64, 0xAA, 2, 0, b'v', b'9']
    );
    assert_eq!(
        payload(&Message::Welcome {
            protocol_version: 0x0102_0304
        }),
        [4, 3, 2, 1]
    );
    assert_eq!(
        payload(&Message::Refuse {
            reason: "no".to_string()
        }),
        [2, 0, b'n', b'o']
    );
    let memory = payload(&Message::Memory {
        pages: vec![
            PageRecord {
                index: 0x0102,
                data: PageData::Zero,
            },
            PageRecord {
                index: 5,
                data: PageData::Bytes(pattern_page(1)),
            },
        ],
    });
    assert_eq!(memory.len(), 4 + 9 + 9 + PAGE_SIZE);
    assert_eq!(&memory[..13], [2, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&memory[13..22], [5, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(&memory[22..], pattern_page(1));
    let set = sections(&[("gic", 1, b"x")]);
    assert_eq!(
        payload(&Message::State {
            sections: set.clone()
        }),
        crate::snapshot::encode_snapshot(&set).unwrap()
    );
    for m in [
        Message::Ready,
        Message::Loaded,
        Message::Commit,
        Message::Running,
        Message::Cancelled,
    ] {
        assert!(payload(&m).is_empty(), "{}", m.name());
    }
}

#[test]
fn a_full_memory_message_round_trips_and_one_page_more_is_refused() {
    let mut pages: Vec<PageRecord> = (0..MAX_PAGES_PER_MESSAGE as u64)
        .map(|i| PageRecord {
            index: i * 3,
            data: if i % 2 == 0 {
                PageData::Bytes(pattern_page(i as u8))
            } else {
                PageData::Zero
            },
        })
        .collect();
    let m = Message::Memory {
        pages: pages.clone(),
    };
    let f = encode_message(&m).unwrap();
    assert_eq!(read_message(&mut &f[..]).unwrap(), m);
    pages.push(PageRecord {
        index: 1 << 40,
        data: PageData::Zero,
    });
    let e = encode_message(&Message::Memory { pages }).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot send a Memory message: it has 1025 pages, more than the limit of 1024"
    );
}

#[test]
fn what_cannot_be_sent_is_refused() {
    let short = Message::Memory {
        pages: vec![PageRecord {
            index: 3,
            data: PageData::Bytes(vec![1; 100]),
        }],
    };
    assert_eq!(
        encode_message(&short).unwrap_err().to_string(),
        "cannot send a Memory message: page 0x3 has 100 bytes instead of 4096"
    );
    let far = Message::Memory {
        pages: vec![PageRecord {
            index: u64::MAX,
            data: PageData::Zero,
        }],
    };
    assert_eq!(
        encode_message(&far).unwrap_err().to_string(),
        "cannot send a Memory message: page index 0xffffffffffffffff is beyond 64-bit addresses"
    );
    let long = Message::Abort {
        reason: "x".repeat(MAX_REASON_LEN + 1),
    };
    assert_eq!(
        encode_message(&long).unwrap_err().to_string(),
        "cannot send a Abort message: its reason is 16385 bytes, over the limit of 16384"
    );
    let hello = Message::Hello {
        protocol_version: 1,
        min_protocol_version: 1,
        vmm_version: "v".repeat(MAX_VMM_VERSION_LEN + 1),
        arch: 0xAA64,
    };
    assert!(
        encode_message(&hello)
            .unwrap_err()
            .to_string()
            .contains("its vmm_version is 257 bytes")
    );
    let bad_name = Message::Preflight {
        sections: sections(&[(&"n".repeat(200), 1, b"")]),
    };
    assert!(
        encode_message(&bad_name)
            .unwrap_err()
            .to_string()
            .starts_with("cannot send a Preflight message: section 1 has a name of 200 bytes"),
    );
    // Nothing is written for a message that cannot be sent.
    let mut w = Vec::new();
    assert!(write_message(&mut w, &short).is_err());
    assert!(w.is_empty());
}

#[test]
fn the_longest_strings_round_trip() {
    for m in [
        Message::Refuse {
            reason: "r".repeat(MAX_REASON_LEN),
        },
        Message::Abort {
            reason: "é".repeat(MAX_REASON_LEN / 2),
        },
        Message::Hello {
            protocol_version: u32::MAX,
            min_protocol_version: 0,
            vmm_version: "v".repeat(MAX_VMM_VERSION_LEN),
            arch: 0,
        },
    ] {
        assert_eq!(
            read_message(&mut &encode_message(&m).unwrap()[..]).unwrap(),
            m
        );
    }
}

#[test]
fn malformed_payloads_are_refused_naming_the_message() {
    use MessageType as T;
    let cases: Vec<(u16, Vec<u8>, &str)> = vec![
        (
            T::Hello as u16,
            vec![1, 0, 0, 0, 1, 0],
            "malformed Hello message: the payload ends in the min_protocol_version: it needs 4 bytes at offset 4, 2 are left",
        ),
        (
            T::Hello as u16,
            [
                &[1, 0, 0, 0, 1, 0, 0, 0, 0x64, 0xAA, 2, 0][..],
                &[0xff, 0xfe],
            ]
            .concat(),
            "malformed Hello message: its vmm_version is not UTF-8",
        ),
        (
            T::Hello as u16,
            [
                &[1, 0, 0, 0, 1, 0, 0, 0, 0x64, 0xAA, 0x01, 0x01][..],
                &[b'v'; 256],
            ]
            .concat(),
            "malformed Hello message: its vmm_version is 257 bytes, over the limit of 256",
        ),
        (
            T::Welcome as u16,
            vec![1, 0],
            "malformed Welcome message: the payload ends in the protocol_version: it needs 4 bytes at offset 0, 2 are left",
        ),
        (
            T::RoundEnd as u16,
            vec![],
            "malformed RoundEnd message: the payload ends in the round: it needs 4 bytes at offset 0, 0 are left",
        ),
        (
            T::Refuse as u16,
            vec![5, 0, b'a', b'b'],
            "malformed Refuse message: the payload ends in the reason: it needs 5 bytes at offset 2, 2 are left",
        ),
        (
            T::Abort as u16,
            vec![1, 0, b'a', b'b'],
            "malformed Abort message: 1 bytes left over after the message",
        ),
        (
            T::Memory as u16,
            vec![1, 4, 0, 0],
            "malformed Memory message: it has 1025 pages, more than the limit of 1024",
        ),
        (
            T::Memory as u16,
            vec![1, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 2],
            "malformed Memory message: page record 0 (page 0x9) has kind 2; 0 (zero) and 1 (bytes) are defined",
        ),
        (
            T::Memory as u16,
            vec![1, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1, 0xaa],
            "malformed Memory message: the payload ends in the data of page 0x9: it needs 4096 bytes at offset 13, 1 are left",
        ),
        (
            T::Memory as u16,
            vec![2, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0],
            "malformed Memory message: the payload ends in the index of page record 1: it needs 8 bytes at offset 13, 0 are left",
        ),
        (
            T::Memory as u16,
            [&[1, 0, 0, 0][..], &u64::MAX.to_le_bytes(), &[0]].concat(),
            "malformed Memory message: page record 0 has index 0xffffffffffffffff, beyond 64-bit addresses",
        ),
        (
            T::Memory as u16,
            vec![0, 0, 0, 0, 0],
            "malformed Memory message: 1 bytes left over after the message",
        ),
        (
            T::Preflight as u16,
            b"VMMSTATX and so on".to_vec(),
            "malformed Preflight message: its sections: not a snapshot state file: it starts with \"VMMSTATX\" instead of \"VMMSTATE\"",
        ),
        (
            T::State as u16,
            vec![],
            "malformed State message: its sections: the snapshot is truncated: the header needs 8 bytes at offset 0, but only 0 are left",
        ),
    ];
    for (kind, payload, want) in cases {
        assert_eq!(err(&raw_frame(kind, 0, &payload)), want);
    }
}

#[test]
fn an_empty_memory_message_and_empty_sets_round_trip() {
    for m in [
        Message::Memory { pages: vec![] },
        Message::State {
            sections: SectionSet::new(),
        },
        Message::Preflight {
            sections: SectionSet::new(),
        },
    ] {
        assert_eq!(
            read_message(&mut &encode_message(&m).unwrap()[..]).unwrap(),
            m
        );
    }
}

#[test]
fn the_page_fast_paths_match_the_message_encoding() {
    let a = vec![0x5a; PAGE_SIZE];
    let b: Vec<u8> = (0..PAGE_SIZE).map(|i| i as u8).collect();
    let records = [
        crate::engine::PageRecord {
            index: 3,
            data: crate::engine::PageData::Bytes(&a),
        },
        crate::engine::PageRecord {
            index: 9,
            data: crate::engine::PageData::Zero,
        },
        crate::engine::PageRecord {
            index: 1 << 40,
            data: crate::engine::PageData::Bytes(&b),
        },
    ];
    let m = Message::Memory {
        pages: vec![
            PageRecord {
                index: 3,
                data: PageData::Bytes(a.clone()),
            },
            PageRecord {
                index: 9,
                data: PageData::Zero,
            },
            PageRecord {
                index: 1 << 40,
                data: PageData::Bytes(b.clone()),
            },
        ],
    };
    let mut out = vec![7u8; 3];
    encode_memory_frame(&records, &mut out).unwrap();
    assert_eq!(out, encode_message(&m).unwrap(), "the same bytes");

    // Read back through the borrowing path, then a non-page message through the same buffer.
    let mut stream = out.clone();
    stream.extend(encode_message(&Message::RoundEnd { round: 4 }).unwrap());
    let mut r = &stream[..];
    let mut buf = Vec::new();
    match read_incoming(&mut r, &mut buf).unwrap() {
        Incoming::Pages(p) => {
            assert_eq!(p.len(), 3);
            let got: Vec<(u64, Option<Vec<u8>>)> =
                p.iter().map(|(i, d)| (i, d.map(<[u8]>::to_vec))).collect();
            assert_eq!(got, vec![(3, Some(a)), (9, None), (1 << 40, Some(b))]);
        }
        Incoming::Message(m) => panic!("pages expected, got {}", m.name()),
    }
    match read_incoming(&mut r, &mut buf).unwrap() {
        Incoming::Message(m) => assert_eq!(m, Message::RoundEnd { round: 4 }),
        Incoming::Pages(_) => panic!("RoundEnd expected"),
    }
    assert!(matches!(
        read_incoming(&mut r, &mut buf),
        Err(ProtocolError::Closed)
    ));
}

#[test]
fn the_page_fast_paths_refuse_what_the_decoder_refuses() {
    let short = [0u8; 100];
    let records = [crate::engine::PageRecord {
        index: 1,
        data: crate::engine::PageData::Bytes(&short),
    }];
    let mut out = Vec::new();
    let e = encode_memory_frame(&records, &mut out).unwrap_err();
    assert!(e.to_string().contains("100 bytes instead of 4096"), "{e}");
    let huge = [crate::engine::PageRecord {
        index: u64::MAX,
        data: crate::engine::PageData::Zero,
    }];
    assert!(encode_memory_frame(&huge, &mut out).is_err());

    // A record of kind 2, checksums made right: refused by both readers alike.
    let m = Message::Memory {
        pages: vec![PageRecord {
            index: 5,
            data: PageData::Zero,
        }],
    };
    let mut f = encode_message(&m).unwrap();
    let last = f.len() - 1;
    f[last] = 2;
    let f = fix_checksums(&f);
    let want = err(&f);
    let mut buf = Vec::new();
    let got = read_incoming(&mut &f[..], &mut buf)
        .unwrap_err()
        .to_string();
    assert_eq!(got, want);
    assert!(got.contains("kind 2"), "{got}");
}
