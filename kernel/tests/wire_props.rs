//! Property tests on the wire layer: no input makes parsing, the replay
//! check or request validation panic, and a signed message is accepted once.

use bytes::Bytes;
use kernel::replay::DigestHistory;
use kernel::signing::Signer;
use kernel::validate;
use kernel::wire::{Message, DELIMITER};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::sync::Mutex;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("code".to_string()),
                    Just("cursor_pos".to_string()),
                    Just("detail_level".to_string()),
                    Just("user_expressions".to_string()),
                    Just("silent".to_string()),
                    Just("hist_access_type".to_string()),
                    Just("n".to_string()),
                    ".{0,6}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const TYPES: &[&str] = &[
    "execute_request",
    "complete_request",
    "inspect_request",
    "is_complete_request",
    "history_request",
    "comm_info_request",
    "shutdown_request",
    "input_reply",
    "kernel_info_request",
    "other_request",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_frames_never_panic(
        frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..9),
        delimiter_at in prop::option::of(0usize..9),
    ) {
        let mut frames: Vec<Bytes> = frames.into_iter().map(Bytes::from).collect();
        if let Some(at) = delimiter_at {
            let at = at.min(frames.len());
            frames.insert(at, Bytes::from_static(DELIMITER));
        }
        let history = Mutex::new(DigestHistory::default());
        let _ = Message::parse_fresh(frames.clone(), &Signer::new("key"), &history);
        let _ = Message::parse_fresh(frames, &Signer::new(""), &history);
    }

    #[test]
    fn validation_never_panics_and_signed_messages_run_once(
        msg_type in prop::sample::select(TYPES),
        content in json_value(),
    ) {
        if validate::check(msg_type, &content).is_ok() && content.get("code").is_some() {
            let _ = validate::cursor_pos(&content);
        }
        let signer = Signer::new("key");
        let msg = Message {
            identities: vec![Bytes::from_static(b"id")],
            header: kernel::wire::new_header(msg_type, "s"),
            parent_header: json!({}),
            metadata: json!({}),
            content,
            buffers: Vec::new(),
        };
        let frames = msg.to_frames(&signer);
        let history = Mutex::new(DigestHistory::default());
        prop_assert!(Message::parse_fresh(frames.clone(), &signer, &history).is_ok());
        prop_assert!(Message::parse_fresh(frames, &signer, &history).is_err());
    }
}
