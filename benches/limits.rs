//! Cost of the per-request access checks: the key lookup (SHA-256 of the presented key,
//! constant-time comparison with every configured digest) plus the requests-per-minute
//! and tokens-per-minute checks, exactly as the chat route runs them
//! (`KeyTable::authenticate`, then `limits::enforce` twice).
//!
//! - `limits/memory`: both checks in this process (governor). Target: ≤ 2 µs per request.
//! - `limits/redis`: one check against a real `redis-server` on loopback (one EVALSHA of
//!   the GCRA script), next to a bare `PING` over the same connection, in the same run.
//!   Target: ≤ 1.5× the PING. The bench starts its own redis-server (Debian's, installed
//!   by `scripts/install-deps.sh test`) on a free loopback port and stops it at the end.
//!
//! Run: `cargo bench --bench limits`.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "benchmark set-up"
)]

use std::hint::black_box;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, header};
use sha2::{Digest, Sha256};
use vision_gateway::config::{Config, RawConfig};
use vision_gateway::keys::{Caller, KeyTable};
use vision_gateway::limits::redis::RedisBackend;
use vision_gateway::limits::{LimitKind, enforce};
use vision_gateway::models::ModelTable;

const KEY: &str = "sk-bench-0123456789abcdef0123456789abcdef";
/// Tokens charged per iteration. GCRA charges any cost with one multiplication, so the
/// check costs the same for 1 token as for a 4,500-token vision request; 1 keeps millions of
/// iterations inside the allowance.
const TOKENS: u64 = 1;

fn table(backend: &str) -> KeyTable {
    let digest: String = Sha256::digest(KEY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // Ten keys, ours last: the comparison runs over all of them anyway. Allowances so large
    // that the bench never runs out (60 million a minute: the most the Redis backend takes).
    let mut text = format!(
        "[[upstreams]]\nname = \"u\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
         [[models]]\nid = \"*\"\nupstream = \"u\"\n{backend}"
    );
    for i in 0..9 {
        text += &format!(
            "[[keys]]\nname = \"other-{i}\"\nsha256 = \"{}\"\n",
            format!("{i:02x}").repeat(32)
        );
    }
    text += &format!(
        "[[keys]]\nname = \"bench\"\nsha256 = \"{digest}\"\n\
         requests_per_minute = 60000000\ntokens_per_minute = 60000000\n"
    );
    let config = Config::from_raw(&RawConfig::from_toml(&text).unwrap(), None).unwrap();
    let models = ModelTable::new(&config).unwrap();
    KeyTable::new(&config, &models).unwrap()
}

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {KEY}")).unwrap(),
    );
    h
}

/// What the chat route does for a key with both limits.
async fn admit(keys: &KeyTable, headers: &HeaderMap) {
    let Some(Caller(key)) = keys.authenticate(headers).unwrap() else {
        panic!("not authenticated")
    };
    let on_error = keys.on_backend_error;
    let requests = key.requests.as_ref().unwrap();
    enforce(requests, LimitKind::Requests, 1, &key.name, on_error, None)
        .await
        .unwrap();
    let tokens = key.tokens.as_ref().unwrap();
    enforce(tokens, LimitKind::Tokens, TOKENS, &key.name, on_error, None)
        .await
        .unwrap();
}

fn memory(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let keys = table("");
    let h = headers();
    let mut g = c.benchmark_group("limits");
    g.bench_function("memory/auth_and_both_checks", |b| {
        b.to_async(&rt)
            .iter(|| admit(black_box(&keys), black_box(&h)))
    });
    g.bench_function("memory/auth_only", |b| {
        b.iter(|| keys.authenticate(black_box(&h)).unwrap())
    });
    g.finish();
}

/// A redis-server of our own on a free loopback port, killed on drop.
struct RedisServer(Child, u16);

impl RedisServer {
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        let out = BufReader::new(child.stdout.take()?);
        for line in out.lines() {
            if line.ok()?.contains("Ready to accept connections") {
                return Some(Self(child, port));
            }
        }
        None
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis(c: &mut Criterion) {
    let Some(server) = RedisServer::start() else {
        eprintln!(
            "limits/redis skipped: redis-server is not installed (scripts/install-deps.sh test)"
        );
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!("redis://127.0.0.1:{}", server.1);
    let _guard = rt.enter();
    let keys = table(&format!(
        "[rate_limits]\nbackend = \"redis\"\nredis_url = \"{url}\"\non_backend_error = \"deny\"\n"
    ));
    let ping = RedisBackend::new(&url, std::time::Duration::from_secs(1)).unwrap();
    rt.block_on(ping.ping()).unwrap();
    let h = headers();
    let Some(Caller(key)) = keys.authenticate(&h).unwrap() else {
        panic!("not authenticated")
    };
    let requests = key.requests.as_ref().unwrap();
    let mut g = c.benchmark_group("limits");
    g.bench_function("redis/ping_baseline", |b| {
        b.to_async(&rt)
            .iter(|| async { ping.ping().await.unwrap() })
    });
    g.bench_function("redis/one_check", |b| {
        b.to_async(&rt).iter(|| async {
            enforce(
                requests,
                LimitKind::Requests,
                1,
                &key.name,
                keys.on_backend_error,
                None,
            )
            .await
            .unwrap()
        })
    });
    g.bench_function("redis/auth_and_both_checks", |b| {
        b.to_async(&rt).iter(|| admit(&keys, &h))
    });
    g.finish();
    drop(server);
}

criterion_group!(benches, memory, redis);
criterion_main!(benches);
