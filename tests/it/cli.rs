//! The binary's command-line contract: check-config.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vision-gateway"));
    c.env_remove("VISION_GATEWAY_CONFIG")
        .env_remove("VISION_GATEWAY_LISTEN");
    c
}

fn temp_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vg-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn check_config_accepts_the_example_and_never_prints_the_secret() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/vision-gateway.toml");
    let out = bin()
        .args(["check-config", "--config", example])
        .env("SCW_SECRET_KEY", "sk-super-secret-value")
        .env("TEAM_A_KEY", "sk-gateway-key-value")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("name = \"scaleway\""), "{stdout}");
    assert!(stdout.contains("SCW_SECRET_KEY"), "{stdout}");
    assert!(stdout.contains("TEAM_A_KEY"), "{stdout}");
    for secret in ["sk-super-secret-value", "sk-gateway-key-value"] {
        assert!(!stdout.contains(secret), "{stdout}");
        assert!(!String::from_utf8_lossy(&out.stderr).contains(secret));
    }
}

#[test]
fn check_config_names_the_bad_key_and_fails() {
    let cases = [
        (
            "typo.toml",
            "[server]\nlisten_addr = \"x\"\n",
            "listen_addr",
        ),
        (
            "missing-upstream.toml",
            "[[upstreams]]\nname = \"a\"\nbase_url = \"http://127.0.0.1:1/v1\"\n[[models]]\nid = \"m\"\nupstream = \"b\"\n",
            "models[0].upstream",
        ),
        (
            "unset-env.toml",
            "[[upstreams]]\nname = \"a\"\nbase_url = \"http://127.0.0.1:1/v1\"\napi_key_env = \"VG_IT_UNSET_KEY\"\n[[models]]\nid = \"*\"\nupstream = \"a\"\n",
            "VG_IT_UNSET_KEY",
        ),
    ];
    for (name, text, key) in cases {
        let path = temp_config(name, text);
        let out = bin()
            .args(["check-config", "--config"])
            .arg(&path)
            .env_remove("VG_IT_UNSET_KEY")
            .output()
            .expect("runs");
        assert!(!out.status.success(), "{name} must be refused");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(key),
            "{name}: expected `{key}` in: {stderr}"
        );
    }
}

#[test]
fn serve_refuses_a_bad_config_at_start_up() {
    let path = temp_config(
        "bad-serve.toml",
        "[[upstreams]]\nname = \"a\"\nbase_url = \"gopher://x\"\n",
    );
    let out = bin().arg("--config").arg(&path).output().expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("upstreams[0].base_url"));
}
