//! Exact text counts with a model's own `tokenizer.json` (the `tokenizer` feature), seen
//! through `/gateway/inspect`; and the refusal of such a config in builds without it.

#[cfg(feature = "tokenizer")]
use crate::support::{Gateway, call, post};

/// A word-level tokenizer.json: every whitespace-separated word is one token, unknown words
/// are `[UNK]` (also one token). Written by hand, as Hugging Face's format has it.
#[cfg(feature = "tokenizer")]
const WORD_LEVEL: &str = r#"{
  "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
  "normalizer": null,
  "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": null, "decoder": null,
  "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "describe": 1, "this": 2, "image": 3},
            "unk_token": "[UNK]"}
}"#;

fn config(upstream: &str, tokenizer: &std::path::Path) -> String {
    format!(
        r#"
[[upstreams]]
name = "u"
base_url = "http://{upstream}/v1"
[[models]]
id = "exact"
upstream = "u"
tokenizer = "{}"
"#,
        tokenizer.display()
    )
}

#[cfg(feature = "tokenizer")]
#[tokio::test]
async fn a_models_tokenizer_counts_text_exactly() {
    let dir = std::env::temp_dir().join(format!("vg-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, WORD_LEVEL).unwrap();
    let gw = Gateway::from_toml(&config("127.0.0.1:9", &path)).await;
    // 7 words ("Describe", "this", "image", "in", "ten", "words", ".") and the role "user":
    // 8 tokens, plus 4 for the message and 3 to prime the reply.
    let body = r#"{"model":"exact","messages":[{"role":"user","content":"Describe this image in ten words ."}]}"#;
    let answer = call(gw.addr, post("/gateway/inspect", body, &[])).await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let report = answer.json();
    assert_eq!(report["tokens"]["text"], 8 + 4 + 3, "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(not(feature = "tokenizer"))]
#[test]
fn without_the_feature_a_tokenizer_is_refused_naming_the_key() {
    let raw = vision_gateway::config::RawConfig::from_toml(&config(
        "127.0.0.1:9",
        std::path::Path::new("/nonexistent/tokenizer.json"),
    ))
    .unwrap();
    let err = vision_gateway::config::Config::from_raw(&raw, None).unwrap_err();
    assert!(err.to_string().contains("models[0].tokenizer"), "{err}");
    assert!(err.to_string().contains("--features tokenizer"), "{err}");
}
