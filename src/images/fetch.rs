//! The fetcher for `http(s)` image URLs: the only outbound IO besides the upstream, written so
//! that a client cannot turn it against the gateway's own network.
//!
//! A fetch parses the URL once (`parse_image_url`), then for every hop: refuses other schemes
//! and user names, resolves the host once (or takes the IP literal as is), refuses the hop if
//! any address is not publicly routable (`addr::is_public`) unless the operator allowed the
//! host, and connects only to the vetted addresses, so a second DNS answer can never change
//! where the connection goes. Redirects are followed by hand, each hop checked again, and
//! https never redirects to http. Every byte and every second is capped: one timeout around
//! the whole fetch, the body counted while streaming and cut at `images.max_fetch_bytes`, a
//! global semaphore on fetches in flight. The first bytes must be an image's magic bytes, so
//! an HTML page is dropped after twelve bytes whatever its Content-Type says.
//!
//! It must not: pool connections across fetches, follow anything the policy has not seen,
//! or put addresses, remote headers or remote bodies into errors (the client sees them).

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT, HOST, LOCATION, USER_AGENT};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use url::{Host, Url};

use crate::config::{AllowedHost, ImagesConfig};
use crate::images::addr::is_public;
use crate::images::sniff::{SNIFF_LEN, sniff};

/// A boxed, sendable future, as returned by [`Resolve`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Turns a host name into addresses. The system resolver in production; tests answer with
/// fixed addresses to check that the fetcher connects only to what it vetted.
pub trait Resolve: Send + Sync + 'static {
    /// All addresses for `host`; `port` is passed for resolvers that want it.
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, io::Result<Vec<IpAddr>>>;
}

/// The operating system's resolver (`getaddrinfo` on tokio's blocking pool).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host, port)).await?;
            Ok(addrs.map(|addr| addr.ip()).collect())
        })
    }
}

/// Why an image URL could not be fetched. Every message is safe to show the client: it says
/// why, never which address a name resolved to, nor anything the remote server sent.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the URL is not valid: {0}")]
    InvalidUrl(url::ParseError),
    #[error("only http and https URLs can be fetched")]
    UnsupportedScheme,
    #[error("URLs with user names or passwords are refused")]
    Credentials,
    #[error("the URL has no host")]
    NoHost,
    #[error("the URL cannot be sent in an HTTP request")]
    Unsendable,
    /// Worded like `NotPublic` on purpose: telling "no such name" from "a private address"
    /// apart would let clients map the gateway's internal DNS.
    #[error("the host has no publicly routable address this gateway may fetch from")]
    Resolve,
    #[error("the host has no publicly routable address this gateway may fetch from")]
    NotPublic,
    #[error("the image server could not be reached")]
    Connect,
    #[error("https image URLs cannot be fetched: the TLS client could not be set up")]
    TlsUnavailable,
    #[error("the TLS handshake with the image server failed")]
    Tls,
    #[error("the image server's response could not be read")]
    Protocol,
    #[error("redirected more than {max} times")]
    TooManyRedirects { max: u32 },
    #[error("redirect from https to http refused")]
    Downgrade,
    #[error("the image server redirected without a valid Location")]
    BadRedirect,
    #[error("the image server answered {}", .0.as_u16())]
    Status(StatusCode),
    #[error("larger than {max} bytes (images.max_fetch_bytes)")]
    TooLarge { max: u64 },
    #[error("the response is not a JPEG, PNG, WebP or GIF image")]
    NotAnImage,
    #[error("timed out after {ms} ms (images.fetch_timeout_ms)")]
    Timeout { ms: u64 },
    #[error("image fetching has been shut down")]
    Closed,
}

impl FetchError {
    /// Whether the gateway's URL or address rules refused the URL (or a redirect): the
    /// client must send another URL. `false` for failures of the remote server or the
    /// network, and for responses that broke a cap.
    pub fn is_policy_refusal(&self) -> bool {
        match self {
            Self::InvalidUrl(_)
            | Self::UnsupportedScheme
            | Self::Credentials
            | Self::NoHost
            | Self::Unsendable
            | Self::NotPublic
            | Self::TooManyRedirects { .. }
            | Self::Downgrade => true,
            Self::Resolve
            | Self::Connect
            | Self::TlsUnavailable
            | Self::Tls
            | Self::Protocol
            | Self::BadRedirect
            | Self::Status(_)
            | Self::TooLarge { .. }
            | Self::NotAnImage
            | Self::Timeout { .. }
            | Self::Closed => false,
        }
    }
}

/// A fetched image body and the URL it finally came from (after redirects).
#[derive(Debug, Clone)]
pub struct Fetched {
    /// At most `images.max_fetch_bytes`, starting with an accepted format's magic bytes.
    pub bytes: Bytes,
    pub final_url: Url,
}

/// Parses an image URL and checks its scheme, user name and host. The `Url` returned is the
/// one to fetch: it is never re-parsed from a string, so what was checked is what is fetched.
pub fn parse_image_url(s: &str) -> Result<Url, FetchError> {
    let url = Url::parse(s).map_err(FetchError::InvalidUrl)?;
    check_url(&url)?;
    Ok(url)
}

/// The checks every URL (the first and each redirect target) must pass before any lookup.
fn check_url(url: &Url) -> Result<(), FetchError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::UnsupportedScheme);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FetchError::Credentials);
    }
    if url.host().is_none() {
        return Err(FetchError::NoHost);
    }
    Ok(())
}

/// Where a redirect from `current` to `location` leads, if the policy lets it: resolved
/// relative to `current`, checked like a first URL, and never from https down to http.
fn redirect_target(current: &Url, location: &str) -> Result<Url, FetchError> {
    let next = current
        .join(location)
        .map_err(|_| FetchError::BadRedirect)?;
    check_url(&next)?;
    if current.scheme() == "https" && next.scheme() == "http" {
        return Err(FetchError::Downgrade);
    }
    Ok(next)
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

const USER_AGENT_VALUE: &str = concat!("vision-gateway/", env!("CARGO_PKG_VERSION"));

/// The safe image fetcher; cheap to clone, shared by all requests.
#[derive(Clone)]
pub struct Fetcher {
    inner: Arc<Inner>,
}

struct Inner {
    resolver: Arc<dyn Resolve>,
    /// `None` when the TLS client could not be built (logged once); https fetches then fail.
    tls: Option<TlsConnector>,
    /// Fetches in flight across all requests.
    permits: Semaphore,
    fetch_timeout: Duration,
    connect_timeout: Duration,
    max_fetch_bytes: u64,
    max_redirects: u32,
    allow_private_networks: bool,
    allow_hosts: Vec<AllowedHost>,
}

impl fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("Fetcher")
            .field("fetch_timeout", &inner.fetch_timeout)
            .field("connect_timeout", &inner.connect_timeout)
            .field("max_fetch_bytes", &inner.max_fetch_bytes)
            .field("max_redirects", &inner.max_redirects)
            .field("allow_private_networks", &inner.allow_private_networks)
            .field("allow_hosts", &inner.allow_hosts)
            .field("tls", &inner.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher using the system resolver.
    pub fn new(config: &ImagesConfig) -> Self {
        Self::with_resolver(config, Arc::new(SystemResolver))
    }

    /// A fetcher using `resolver` for host names (tests use fixed answers).
    pub fn with_resolver(config: &ImagesConfig, resolver: Arc<dyn Resolve>) -> Self {
        let tls = match tls_connector() {
            Ok(connector) => Some(connector),
            Err(error) => {
                tracing::error!(%error, "cannot set up TLS; https image URLs will be refused");
                None
            }
        };
        let permits = usize::try_from(config.max_concurrent_fetches.get())
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Self {
            inner: Arc::new(Inner {
                resolver,
                tls,
                permits: Semaphore::new(permits),
                fetch_timeout: config.fetch_timeout,
                connect_timeout: config.connect_timeout,
                max_fetch_bytes: config.max_fetch_bytes.get(),
                max_redirects: config.max_redirects,
                allow_private_networks: config.allow_private_networks,
                allow_hosts: config.allow_hosts.clone(),
            }),
        }
    }

    /// Fetches one image URL; returns the body (capped) and the final URL.
    pub async fn fetch(&self, url: &Url) -> Result<Fetched, FetchError> {
        let limit = self.inner.fetch_timeout;
        let result = match tokio::time::timeout(limit, self.fetch_in_time(url)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(FetchError::Timeout {
                ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
            }),
        };
        if let Err(error) = &result {
            tracing::debug!(host = url.host_str().unwrap_or(""), reason = %error, "image fetch failed");
        }
        result
    }

    /// The fetch without its overall deadline, which `fetch` puts around it. Waiting for a
    /// permit counts against the deadline too: a request must not wait forever for a slot.
    async fn fetch_in_time(&self, url: &Url) -> Result<Fetched, FetchError> {
        // The caller may hold a `Url` that did not come from `parse_image_url`.
        check_url(url)?;
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .map_err(|_closed| FetchError::Closed)?;
        let mut current = url.clone();
        let mut redirects: u32 = 0;
        loop {
            let Exchange {
                response,
                connection,
            } = self.exchange(&current).await?;
            let status = response.status();
            if is_redirect(status) {
                if redirects >= self.inner.max_redirects {
                    return Err(FetchError::TooManyRedirects {
                        max: self.inner.max_redirects,
                    });
                }
                redirects += 1;
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|value| value.to_str().ok())
                    .ok_or(FetchError::BadRedirect)?;
                current = redirect_target(&current, location)?;
                tracing::debug!(
                    host = current.host_str().unwrap_or(""),
                    "following a redirect"
                );
                continue;
            }
            if !status.is_success() {
                return Err(FetchError::Status(status));
            }
            let bytes = read_body(response.into_body(), self.inner.max_fetch_bytes).await;
            drop(connection);
            return Ok(Fetched {
                bytes: bytes?,
                final_url: current,
            });
        }
    }

    /// One hop: vet the addresses, connect to one of them, send the GET, return the head.
    async fn exchange(&self, url: &Url) -> Result<Exchange, FetchError> {
        let request = build_request(url)?;
        let port = url
            .port_or_known_default()
            .ok_or(FetchError::UnsupportedScheme)?;
        let addrs = self.vetted_addresses(url, port).await?;
        let tcp = connect(&addrs, port, self.inner.connect_timeout).await?;
        match url.scheme() {
            "http" => send(tcp, request).await,
            "https" => {
                let connector = self.inner.tls.as_ref().ok_or(FetchError::TlsUnavailable)?;
                let name = server_name(url)?;
                let tls = connector.connect(name, tcp).await.map_err(|error| {
                    tracing::debug!(%error, "TLS handshake with an image server failed");
                    FetchError::Tls
                })?;
                send(tls, request).await
            }
            _ => Err(FetchError::UnsupportedScheme),
        }
    }

    /// The addresses a hop may connect to: the IP literal, or every DNS answer, each one
    /// publicly routable unless the operator allowed private networks or this host.
    async fn vetted_addresses(&self, url: &Url, port: u16) -> Result<Vec<IpAddr>, FetchError> {
        let ips = match url.host() {
            Some(Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
            Some(Host::Ipv6(ip)) => vec![IpAddr::V6(ip)],
            Some(Host::Domain(name)) => {
                self.inner
                    .resolver
                    .resolve(name, port)
                    .await
                    .map_err(|error| {
                        tracing::debug!(host = name, %error, "image host did not resolve");
                        FetchError::Resolve
                    })?
            }
            None => return Err(FetchError::NoHost),
        };
        if ips.is_empty() {
            return Err(FetchError::Resolve);
        }
        if !self.may_reach_private(url, port)
            && let Some(refused) = ips.iter().find(|ip| !is_public(**ip))
        {
            tracing::debug!(
                host = url.host_str().unwrap_or(""),
                addr = %refused,
                "image host refused: address not publicly routable"
            );
            return Err(FetchError::NotPublic);
        }
        Ok(ips)
    }

    fn may_reach_private(&self, url: &Url, port: u16) -> bool {
        if self.inner.allow_private_networks {
            return true;
        }
        let Some(host) = url.host_str() else {
            return false;
        };
        self.inner
            .allow_hosts
            .iter()
            .any(|allowed| allowed.host == host && allowed.port.is_none_or(|p| p == port))
    }
}

/// A response head and the task driving its connection. Dropping it aborts the task, so a
/// connection never outlives the fetch that opened it (a stalled server is simply dropped).
struct Exchange {
    response: Response<Incoming>,
    connection: AbortOnDrop,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn tls_connector() -> Result<TlsConnector, rustls::Error> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// SNI and certificate name: the URL's domain, or its IP literal.
fn server_name(url: &Url) -> Result<ServerName<'static>, FetchError> {
    match url.host() {
        Some(Host::Domain(name)) => {
            ServerName::try_from(name.to_owned()).map_err(|_invalid| FetchError::Tls)
        }
        Some(Host::Ipv4(ip)) => Ok(ServerName::from(IpAddr::V4(ip))),
        Some(Host::Ipv6(ip)) => Ok(ServerName::from(IpAddr::V6(ip))),
        None => Err(FetchError::NoHost),
    }
}

/// The GET for one hop: origin-form target, `Host` with the port when it is not the
/// default, and headers saying what we want and who asks.
fn build_request(url: &Url) -> Result<Request<Empty<Bytes>>, FetchError> {
    let target = &url[url::Position::BeforePath..url::Position::AfterQuery];
    let host = url.host_str().ok_or(FetchError::NoHost)?;
    let host = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    Request::get(target)
        .header(HOST, host)
        .header(ACCEPT, "image/*")
        .header(USER_AGENT, USER_AGENT_VALUE)
        .body(Empty::new())
        .map_err(|_invalid| FetchError::Unsendable)
}

/// Connects to the vetted addresses in order, each within `timeout`; never looks up again.
async fn connect(ips: &[IpAddr], port: u16, timeout: Duration) -> Result<TcpStream, FetchError> {
    for ip in ips {
        let addr = SocketAddr::new(*ip, port);
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%error, "cannot set TCP_NODELAY on an image connection");
                }
                return Ok(stream);
            }
            Ok(Err(error)) => tracing::debug!(%error, "image connect failed"),
            Err(_elapsed) => tracing::debug!(?timeout, "image connect timed out"),
        }
    }
    Err(FetchError::Connect)
}

/// HTTP/1.1 over `io`: handshake, spawn the connection (aborted when the `Exchange` drops),
/// send the request and wait for the response head.
async fn send<T>(io: T, request: Request<Empty<Bytes>>) -> Result<Exchange, FetchError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(protocol_error)?;
    let connection = AbortOnDrop(tokio::spawn(async move {
        if let Err(error) = conn.await {
            tracing::debug!(%error, "image connection ended with an error");
        }
    }));
    let response = sender.send_request(request).await.map_err(protocol_error)?;
    Ok(Exchange {
        response,
        connection,
    })
}

fn protocol_error(error: hyper::Error) -> FetchError {
    tracing::debug!(%error, "image server exchange failed");
    FetchError::Protocol
}

/// Reads the body into one buffer, refusing it as soon as it is known to be too large (from
/// Content-Length before reading, or by counting) or not an image (from its first
/// `SNIFF_LEN` bytes). Each frame is copied out at once, so tiny frames cannot pin hyper's
/// read buffers; the buffer grows with what arrives and never reserves more than a
/// Content-Length within the cap, so a lying length costs nothing either.
async fn read_body(mut body: Incoming, max: u64) -> Result<Bytes, FetchError> {
    let too_large = || FetchError::TooLarge { max };
    let hint = body.size_hint();
    if hint.lower() > max {
        return Err(too_large());
    }
    let exact = hint.exact().unwrap_or(0).min(max);
    let mut buf = BytesMut::with_capacity(usize::try_from(exact).unwrap_or(0).min(1 << 20));
    let mut sniffed = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(protocol_error)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let total = u64::try_from(buf.len().saturating_add(data.len())).unwrap_or(u64::MAX);
        if total > max {
            return Err(too_large());
        }
        buf.extend_from_slice(&data);
        if !sniffed && buf.len() >= SNIFF_LEN {
            if sniff(&buf).is_none() {
                return Err(FetchError::NotAnImage);
            }
            sniffed = true;
        }
    }
    if !sniffed {
        return Err(FetchError::NotAnImage);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;
    use crate::config::{Config, RawConfig, RawImages};

    const PNG_MAGIC: &[u8] = &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

    /// A body starting with PNG magic bytes, `len` bytes long.
    fn png(len: usize) -> Vec<u8> {
        let mut body = PNG_MAGIC.to_vec();
        body.resize(len, 0xAB);
        body
    }

    /// Validated `[images]` through the real config path, so `allow_hosts` entries are parsed
    /// exactly as in production.
    fn images(edit: impl FnOnce(&mut RawImages)) -> ImagesConfig {
        let mut raw = RawConfig::builtin(SocketAddr::from((Ipv4Addr::LOCALHOST, 9)));
        raw.images.fetch_timeout_ms = 10_000;
        raw.images.connect_timeout_ms = 2_000;
        edit(&mut raw.images);
        Config::from_raw(&raw, None).unwrap().images
    }

    fn private_allowed() -> ImagesConfig {
        images(|i| i.allow_private_networks = true)
    }

    /// What the test server saw of a request.
    #[derive(Debug, Clone)]
    struct Seen {
        path: String,
        head: String,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.head.lines().find_map(|line| {
                let (n, v) = line.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim())
            })
        }
    }

    /// A loopback HTTP server with hand-written responses; counts accepted connections and
    /// records request heads.
    struct Server {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl Server {
        async fn start<F, Fut>(handler: F) -> Self
        where
            F: Fn(TcpStream, Seen) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = ()> + Send + 'static,
        {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let accepted = Arc::new(AtomicUsize::new(0));
            let seen = Arc::new(Mutex::new(Vec::new()));
            let handler = Arc::new(handler);
            let (count, log) = (accepted.clone(), seen.clone());
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    count.fetch_add(1, SeqCst);
                    let (handler, log) = (handler.clone(), log.clone());
                    tokio::spawn(async move {
                        let Some(request) = read_head(&mut stream).await else {
                            return;
                        };
                        log.lock().unwrap().push(request.clone());
                        handler(stream, request).await;
                    });
                }
            });
            Self {
                addr,
                accepted,
                seen,
            }
        }

        /// A server answering every request with the same bytes, then closing.
        async fn fixed(response: Vec<u8>) -> Self {
            let response = Arc::new(response);
            Self::start(move |stream, _| respond(stream, response.clone())).await
        }

        /// A server sending `bytes` and then holding the connection open forever.
        async fn stalling(bytes: Vec<u8>) -> Self {
            let bytes = Arc::new(bytes);
            Self::start(move |mut stream, _| {
                let bytes = bytes.clone();
                async move {
                    stream.write_all(&bytes).await.unwrap();
                    std::future::pending::<()>().await;
                    drop(stream);
                }
            })
            .await
        }

        fn port(&self) -> u16 {
            self.addr.port()
        }

        fn url(&self, path: &str) -> Url {
            parse_image_url(&format!("http://{}{path}", self.addr)).unwrap()
        }

        fn accepted(&self) -> usize {
            self.accepted.load(SeqCst)
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    async fn read_head(stream: &mut TcpStream) -> Option<Seen> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 || buf.len() > 64 * 1024 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let head = String::from_utf8(buf).ok()?;
        let path = head.split(' ').nth(1)?.to_owned();
        Some(Seen { path, head })
    }

    async fn respond(mut stream: TcpStream, response: Arc<Vec<u8>>) {
        // The client may hang up first (a refused body); that is not a test failure.
        let _ = stream.write_all(&response).await;
        let _ = stream.shutdown().await;
    }

    fn ok_with(body: &[u8]) -> Vec<u8> {
        let mut response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(body);
        response
    }

    fn redirect(status: u16, location: &str) -> Vec<u8> {
        format!("HTTP/1.1 {status} Moved\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n")
            .into_bytes()
    }

    /// Answers `name` with fixed addresses and counts lookups.
    struct FakeResolver {
        answers: Vec<IpAddr>,
        calls: AtomicUsize,
    }

    impl FakeResolver {
        fn new(answers: &[&str]) -> Arc<Self> {
            Arc::new(Self {
                answers: answers.iter().map(|a| a.parse().unwrap()).collect(),
                calls: AtomicUsize::new(0),
            })
        }
    }

    impl Resolve for FakeResolver {
        fn resolve<'a>(&'a self, _: &'a str, _: u16) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
            self.calls.fetch_add(1, SeqCst);
            let answers = self.answers.clone();
            Box::pin(async move { Ok(answers) })
        }
    }

    #[tokio::test]
    async fn fetches_a_png_from_loopback_when_private_networks_are_allowed() {
        let body = png(100);
        let server = Server::fixed(ok_with(&body)).await;
        let url = server.url("/cat.png?size=big");
        let fetched = Fetcher::new(&private_allowed()).fetch(&url).await.unwrap();
        assert_eq!(fetched.bytes.as_ref(), body.as_slice());
        assert_eq!(fetched.final_url, url);
        assert_eq!(server.accepted(), 1);
        let seen = &server.seen()[0];
        assert_eq!(seen.path, "/cat.png?size=big");
        assert!(seen.head.starts_with("GET /cat.png?size=big HTTP/1.1\r\n"));
        assert_eq!(seen.header("host"), Some(server.addr.to_string().as_str()));
        assert_eq!(seen.header("accept"), Some("image/*"));
        assert_eq!(seen.header("user-agent"), Some(USER_AGENT_VALUE));
    }

    #[tokio::test]
    async fn loopback_is_refused_by_default_without_connecting() {
        let server = Server::fixed(ok_with(&png(100))).await;
        let error = Fetcher::new(&images(|_| {}))
            .fetch(&server.url("/cat.png"))
            .await
            .unwrap_err();
        assert!(matches!(error, FetchError::NotPublic), "{error:?}");
        assert!(error.is_policy_refusal());
        assert_eq!(
            error.to_string(),
            "the host has no publicly routable address this gateway may fetch from"
        );
        assert_eq!(server.accepted(), 0);
    }

    #[tokio::test]
    async fn every_spelling_of_a_private_address_is_refused_without_connecting() {
        let server = Server::fixed(ok_with(&png(100))).await;
        let p = server.port();
        // A short connect timeout: should a refusal ever regress, a test must not hang on an
        // unroutable address.
        let fetcher = Fetcher::new(&images(|i| i.connect_timeout_ms = 100));
        let spellings = [
            format!("http://127.0.0.1:{p}/"),
            format!("http://2130706433:{p}/"),
            format!("http://0x7f.1:{p}/"),
            format!("http://127.1:{p}/"),
            format!("http://0177.0.0.1:{p}/"),
            format!("http://[::ffff:127.0.0.1]:{p}/"),
            format!("http://[::1]:{p}/"),
            format!("http://[::127.0.0.1]:{p}/"),
            format!("HTTP://127.0.0.1.:{p}/"),
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "http://[64:ff9b::7f00:1]/".to_owned(),
            "http://[2002:7f00:1::]/".to_owned(),
            "http://10.0.0.1/".to_owned(),
            "http://100.64.0.1/".to_owned(),
            "http://[fe80::1]/".to_owned(),
            "http://[fd00::1]/".to_owned(),
            "http://0.0.0.0/".to_owned(),
        ];
        for spelling in &spellings {
            let url = parse_image_url(spelling).unwrap();
            let error = fetcher.fetch(&url).await.unwrap_err();
            assert!(
                matches!(error, FetchError::NotPublic),
                "{spelling}: {error:?}"
            );
            let message = error.to_string();
            assert!(!message.contains("127.0.0.1"), "{spelling}: {message}");
            assert!(!message.contains("169.254"), "{spelling}: {message}");
        }
        // `localhost` goes through the system resolver (the hosts file); whatever it answers
        // is loopback or nothing.
        let url = parse_image_url(&format!("http://localhost:{p}/")).unwrap();
        let error = fetcher.fetch(&url).await.unwrap_err();
        assert!(
            matches!(error, FetchError::NotPublic | FetchError::Resolve),
            "{error:?}"
        );
        assert!(!error.to_string().contains("127.0.0.1"));
        assert_eq!(server.accepted(), 0);
    }

    #[tokio::test]
    async fn allow_hosts_lets_exactly_the_listed_port_through() {
        let server = Server::fixed(ok_with(&png(100))).await;
        let p = server.port();
        let other = p.wrapping_add(1).max(1);
        let url = server.url("/cat.png");

        let listed = images(|i| i.allow_hosts = vec![format!("127.0.0.1:{p}")]);
        Fetcher::new(&listed).fetch(&url).await.unwrap();
        assert_eq!(server.accepted(), 1);

        let any_port = images(|i| i.allow_hosts = vec!["127.1".to_owned()]);
        Fetcher::new(&any_port).fetch(&url).await.unwrap();
        assert_eq!(server.accepted(), 2);

        let other_port = images(|i| i.allow_hosts = vec![format!("127.0.0.1:{other}")]);
        let error = Fetcher::new(&other_port).fetch(&url).await.unwrap_err();
        assert!(matches!(error, FetchError::NotPublic), "{error:?}");
        assert!(!error.to_string().contains("127.0.0.1"));
        assert_eq!(server.accepted(), 2);
    }

    #[tokio::test]
    async fn a_dns_answer_with_any_private_address_is_refused() {
        let url = parse_image_url("http://images.example/cat.png").unwrap();
        for answers in [
            &["8.8.8.8", "127.0.0.1"][..],
            &["2606:4700::1111", "fd00::1"],
            &["10.0.0.1"],
            &["::ffff:169.254.169.254"],
        ] {
            let resolver = FakeResolver::new(answers);
            let fetcher = Fetcher::with_resolver(&images(|_| {}), resolver.clone());
            let error = fetcher.fetch(&url).await.unwrap_err();
            assert!(
                matches!(error, FetchError::NotPublic),
                "{answers:?}: {error:?}"
            );
            assert_eq!(resolver.calls.load(SeqCst), 1);
            for answer in answers {
                assert!(!error.to_string().contains(answer));
            }
        }
    }

    #[tokio::test]
    async fn an_empty_dns_answer_is_a_resolve_error() {
        let url = parse_image_url("http://images.example/cat.png").unwrap();
        let fetcher = Fetcher::with_resolver(&images(|_| {}), FakeResolver::new(&[]));
        let error = fetcher.fetch(&url).await.unwrap_err();
        assert!(matches!(error, FetchError::Resolve), "{error:?}");
    }

    #[tokio::test]
    async fn connects_only_to_the_vetted_addresses_in_order_after_one_lookup() {
        let body = png(64);
        let server = Server::fixed(ok_with(&body)).await;
        // Nothing listens on 127.0.0.2 at this port, so the first address fails and the
        // fetcher moves on to the second; the resolver is never asked again.
        let resolver = FakeResolver::new(&["127.0.0.2", "127.0.0.1"]);
        let fetcher = Fetcher::with_resolver(&private_allowed(), resolver.clone());
        let url = parse_image_url(&format!("http://images.test:{}/a.png", server.port())).unwrap();
        let fetched = fetcher.fetch(&url).await.unwrap();
        assert_eq!(fetched.bytes.as_ref(), body.as_slice());
        assert_eq!(resolver.calls.load(SeqCst), 1);
        assert_eq!(server.accepted(), 1);
        let expected_host = format!("images.test:{}", server.port());
        assert_eq!(
            server.seen()[0].header("host"),
            Some(expected_host.as_str())
        );
    }

    /// `/r/N` redirects (relative `Location`) to `/r/N-1`; `/r/0` is a PNG.
    async fn redirect_chain() -> Server {
        Server::start(|stream, seen| {
            let n: u32 = seen.path.trim_start_matches("/r/").parse().unwrap();
            let response = match n {
                0 => ok_with(&png(32)),
                n if n % 2 == 0 => redirect(302, &format!("/r/{}", n - 1)),
                n => redirect(307, &format!("{}", n - 1)),
            };
            respond(stream, Arc::new(response))
        })
        .await
    }

    #[tokio::test]
    async fn redirects_are_followed_within_the_limit() {
        let server = redirect_chain().await;
        let fetcher = Fetcher::new(&private_allowed());
        let fetched = fetcher.fetch(&server.url("/r/3")).await.unwrap();
        assert_eq!(fetched.final_url, server.url("/r/0"));
        assert_eq!(fetched.bytes.len(), 32);
        assert_eq!(server.accepted(), 4);
    }

    #[tokio::test]
    async fn one_redirect_too_many_is_refused() {
        let server = redirect_chain().await;
        let fetcher = Fetcher::new(&private_allowed());
        let error = fetcher.fetch(&server.url("/r/4")).await.unwrap_err();
        assert!(
            matches!(error, FetchError::TooManyRedirects { max: 3 }),
            "{error:?}"
        );
        assert_eq!(error.to_string(), "redirected more than 3 times");
        // The fourth redirect was refused, not followed.
        assert_eq!(server.accepted(), 4);

        let none = Fetcher::new(&images(|i| {
            i.allow_private_networks = true;
            i.max_redirects = 0;
        }));
        let error = none.fetch(&server.url("/r/1")).await.unwrap_err();
        assert!(
            matches!(error, FetchError::TooManyRedirects { max: 0 }),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn a_redirect_into_a_refused_address_is_refused() {
        let elsewhere = Server::fixed(ok_with(&png(32))).await;
        let targets = Arc::new(vec![
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "http://10.0.0.1/".to_owned(),
            format!("http://127.0.0.1:{}/", elsewhere.port()),
            format!("http://[::ffff:127.0.0.1]:{}/", elsewhere.port()),
            format!("http://2130706433:{}/", elsewhere.port()),
        ]);
        let list = targets.clone();
        let server = Server::start(move |stream, seen| {
            let i: usize = seen.path.trim_start_matches('/').parse().unwrap();
            respond(stream, Arc::new(redirect(302, &list[i])))
        })
        .await;
        // Only the first host (this exact port) may be private.
        let config = images(|i| {
            i.allow_hosts = vec![format!("127.0.0.1:{}", server.port())];
            i.connect_timeout_ms = 100;
        });
        let fetcher = Fetcher::new(&config);
        for (i, target) in targets.iter().enumerate() {
            let error = fetcher
                .fetch(&server.url(&format!("/{i}")))
                .await
                .unwrap_err();
            assert!(
                matches!(error, FetchError::NotPublic),
                "{target}: {error:?}"
            );
            assert!(!error.to_string().contains("127.0.0.1"));
        }
        assert_eq!(server.accepted(), targets.len());
        assert_eq!(elsewhere.accepted(), 0);
    }

    #[tokio::test]
    async fn redirects_with_a_bad_scheme_credentials_or_no_location_are_refused() {
        let server = Server::start(|stream, seen| {
            let response = match seen.path.as_str() {
                "/ftp" => redirect(301, "ftp://example.com/cat.png"),
                "/file" => redirect(308, "file:///etc/passwd"),
                "/user" => redirect(302, "http://user:pw@example.com/"),
                _ => b"HTTP/1.1 302 Found\r\ncontent-length: 0\r\n\r\n".to_vec(),
            };
            respond(stream, Arc::new(response))
        })
        .await;
        let fetcher = Fetcher::new(&private_allowed());
        let fetch = |path: &str| {
            let (fetcher, url) = (fetcher.clone(), server.url(path));
            async move { fetcher.fetch(&url).await }
        };
        assert!(matches!(
            fetch("/ftp").await,
            Err(FetchError::UnsupportedScheme)
        ));
        assert!(matches!(
            fetch("/file").await,
            Err(FetchError::UnsupportedScheme)
        ));
        assert!(matches!(fetch("/user").await, Err(FetchError::Credentials)));
        assert!(matches!(fetch("/none").await, Err(FetchError::BadRedirect)));
        assert_eq!(server.accepted(), 4);
    }

    #[test]
    fn redirect_policy() {
        let https = Url::parse("https://images.example/a/b.png").unwrap();
        let http = Url::parse("http://images.example/a/b.png").unwrap();

        let error = redirect_target(&https, "http://images.example/c.png").unwrap_err();
        assert!(matches!(error, FetchError::Downgrade), "{error:?}");
        assert_eq!(error.to_string(), "redirect from https to http refused");
        assert!(matches!(
            redirect_target(&https, "HTTP://other.example/"),
            Err(FetchError::Downgrade)
        ));

        let up = redirect_target(&http, "https://images.example/c.png").unwrap();
        assert_eq!(up.as_str(), "https://images.example/c.png");
        let same = redirect_target(&https, "https://cdn.example/c.png").unwrap();
        assert_eq!(same.as_str(), "https://cdn.example/c.png");
        // Relative and scheme-relative locations keep the current scheme.
        let relative = redirect_target(&https, "c.png?x=1").unwrap();
        assert_eq!(relative.as_str(), "https://images.example/a/c.png?x=1");
        let rooted = redirect_target(&https, "/c.png").unwrap();
        assert_eq!(rooted.as_str(), "https://images.example/c.png");
        let scheme_relative = redirect_target(&https, "//cdn.example/c.png").unwrap();
        assert_eq!(scheme_relative.as_str(), "https://cdn.example/c.png");

        for bad_scheme in [
            "ftp://x.example/",
            "file:///etc/passwd",
            "data:image/png,xx",
        ] {
            let error = redirect_target(&http, bad_scheme).unwrap_err();
            assert!(
                matches!(error, FetchError::UnsupportedScheme),
                "{bad_scheme}"
            );
        }
        assert!(matches!(
            redirect_target(&http, "http://u:p@x.example/"),
            Err(FetchError::Credentials)
        ));
        assert!(matches!(
            redirect_target(&http, "http://"),
            Err(FetchError::BadRedirect)
        ));
        assert!(matches!(
            redirect_target(&http, "http://[::1"),
            Err(FetchError::BadRedirect)
        ));
    }

    #[test]
    fn parse_image_url_refuses_other_schemes_and_userinfo() {
        for url in [
            "ftp://example.com/cat.png",
            "file:///etc/passwd",
            "data:image/png;base64,iVBORw0KGgo=",
            "javascript:alert(1)",
            "gopher://example.com/",
        ] {
            let error = parse_image_url(url).unwrap_err();
            assert!(
                matches!(error, FetchError::UnsupportedScheme),
                "{url}: {error:?}"
            );
            assert_eq!(error.to_string(), "only http and https URLs can be fetched");
        }
        for url in [
            "http://user@example.com/",
            "http://:secret@example.com/",
            "https://user:secret@example.com/",
        ] {
            let error = parse_image_url(url).unwrap_err();
            assert!(matches!(error, FetchError::Credentials), "{url}: {error:?}");
            assert!(!error.to_string().contains("secret"));
        }
        assert!(matches!(
            parse_image_url("not a url"),
            Err(FetchError::InvalidUrl(_))
        ));
        assert!(matches!(
            parse_image_url("http://"),
            Err(FetchError::InvalidUrl(_))
        ));

        let url = parse_image_url("https://Example.COM/cat.png").unwrap();
        assert_eq!(url.host_str(), Some("example.com"));
        // IPv4 spellings are normalised by the parser, so the literal is what gets vetted.
        for spelling in ["http://0x7f.1/", "http://2130706433/", "http://127.1/"] {
            let url = parse_image_url(spelling).unwrap();
            assert_eq!(
                url.host(),
                Some(Host::Ipv4(Ipv4Addr::LOCALHOST)),
                "{spelling}"
            );
        }
    }

    #[tokio::test]
    async fn an_error_status_names_the_code() {
        let server =
            Server::fixed(b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nnot found".to_vec())
                .await;
        let error = Fetcher::new(&private_allowed())
            .fetch(&server.url("/missing.png"))
            .await
            .unwrap_err();
        assert!(
            matches!(error, FetchError::Status(StatusCode::NOT_FOUND)),
            "{error:?}"
        );
        assert_eq!(error.to_string(), "the image server answered 404");
        assert!(!error.is_policy_refusal());
    }

    #[tokio::test]
    async fn html_is_refused_without_reading_the_rest() {
        // The server claims a large PNG, sends the start of an HTML page and then stalls.
        // Only a fetcher that stops after the first bytes can answer "not an image"; one that
        // read on would hit the 10 s timeout instead.
        let mut response =
            b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: 100000\r\n\r\n"
                .to_vec();
        response.extend_from_slice(b"<!doctype html><html><head><title>hi</title>");
        let server = Server::stalling(response).await;
        let error = Fetcher::new(&private_allowed())
            .fetch(&server.url("/cat.png"))
            .await
            .unwrap_err();
        assert!(matches!(error, FetchError::NotAnImage), "{error:?}");
        assert_eq!(
            error.to_string(),
            "the response is not a JPEG, PNG, WebP or GIF image"
        );
        assert!(!error.to_string().contains("html"));
    }

    #[tokio::test]
    async fn a_body_shorter_than_the_sniff_length_is_not_an_image() {
        let server = Server::fixed(ok_with(b"GIF89a")).await;
        let error = Fetcher::new(&private_allowed())
            .fetch(&server.url("/tiny.gif"))
            .await
            .unwrap_err();
        assert!(matches!(error, FetchError::NotAnImage), "{error:?}");
    }

    fn capped(max: u64) -> ImagesConfig {
        images(|i| {
            i.allow_private_networks = true;
            i.max_fetch_bytes = max;
        })
    }

    #[track_caller]
    fn assert_too_large(result: Result<Fetched, FetchError>, max: u64) {
        let error = result.unwrap_err();
        assert!(
            matches!(error, FetchError::TooLarge { max: m } if m == max),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            format!("larger than {max} bytes (images.max_fetch_bytes)")
        );
    }

    #[test]
    fn too_large_message_names_the_setting() {
        let error = FetchError::TooLarge { max: 20_971_520 };
        assert_eq!(
            error.to_string(),
            "larger than 20971520 bytes (images.max_fetch_bytes)"
        );
    }

    #[tokio::test]
    async fn a_body_exactly_at_the_cap_is_accepted() {
        let server = Server::fixed(ok_with(&png(1000))).await;
        let fetched = Fetcher::new(&capped(1000))
            .fetch(&server.url("/a.png"))
            .await
            .unwrap();
        assert_eq!(fetched.bytes.len(), 1000);
    }

    #[tokio::test]
    async fn a_content_length_over_the_cap_is_refused_before_reading() {
        // Headers only, then silence: the refusal must come from Content-Length alone.
        let server = Server::stalling(
            b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: 1001\r\n\r\n".to_vec(),
        )
        .await;
        let result = Fetcher::new(&capped(1000))
            .fetch(&server.url("/a.png"))
            .await;
        assert_too_large(result, 1000);
    }

    #[tokio::test]
    async fn a_body_without_content_length_is_counted() {
        // Close-delimited, one byte over the cap, then the connection stays open: the
        // refusal must come from counting, not from the end of the body.
        let mut response = b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\n\r\n".to_vec();
        response.extend_from_slice(&png(1001));
        let server = Server::stalling(response).await;
        let result = Fetcher::new(&capped(1000))
            .fetch(&server.url("/a.png"))
            .await;
        assert_too_large(result, 1000);
    }

    #[tokio::test]
    async fn a_chunked_body_over_the_cap_is_too_large() {
        let mut response =
            b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ntransfer-encoding: chunked\r\n\r\n"
                .to_vec();
        let body = png(1200);
        for chunk in body.chunks(300) {
            response.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            response.extend_from_slice(chunk);
            response.extend_from_slice(b"\r\n");
        }
        let server = Server::stalling(response).await;
        let result = Fetcher::new(&capped(1000))
            .fetch(&server.url("/a.png"))
            .await;
        assert_too_large(result, 1000);
    }

    #[tokio::test]
    async fn an_endless_body_is_too_large() {
        let server = Server::start(|mut stream, _| async move {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: image/png\r\n\
                        transfer-encoding: chunked\r\n\r\n";
            stream.write_all(head.as_bytes()).await.unwrap();
            let first = png(4096);
            let mut chunk = format!("{:x}\r\n", first.len()).into_bytes();
            chunk.extend_from_slice(&first);
            chunk.extend_from_slice(b"\r\n");
            // Until the fetcher hangs up.
            while stream.write_all(&chunk).await.is_ok() {}
        })
        .await;
        let result = Fetcher::new(&capped(100_000))
            .fetch(&server.url("/a.png"))
            .await;
        assert_too_large(result, 100_000);
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let server = Server::stalling(Vec::new()).await;
        let config = images(|i| {
            i.allow_private_networks = true;
            i.fetch_timeout_ms = 200;
        });
        let error = Fetcher::new(&config)
            .fetch(&server.url("/a.png"))
            .await
            .unwrap_err();
        assert!(
            matches!(error, FetchError::Timeout { ms: 200 }),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "timed out after 200 ms (images.fetch_timeout_ms)"
        );
        assert_eq!(server.accepted(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_max_concurrent_fetches_connections_are_open_at_once() {
        const FETCHES: usize = 6;
        let open = Arc::new(AtomicUsize::new(0));
        let most_open = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Semaphore::new(0));
        let (arrived_tx, mut arrived) = mpsc::unbounded_channel::<()>();
        let server = {
            let (open, most_open, release) = (open.clone(), most_open.clone(), release.clone());
            Server::start(move |stream, _| {
                let (open, most_open, release) = (open.clone(), most_open.clone(), release.clone());
                let arrived_tx = arrived_tx.clone();
                async move {
                    let now = open.fetch_add(1, SeqCst) + 1;
                    most_open.fetch_max(now, SeqCst);
                    arrived_tx.send(()).unwrap();
                    release.acquire().await.unwrap().forget();
                    // Closed (as far as the count goes) before the client can finish and
                    // let the next fetch in.
                    open.fetch_sub(1, SeqCst);
                    respond(stream, Arc::new(ok_with(&png(32)))).await;
                }
            })
            .await
        };
        let config = images(|i| {
            i.allow_private_networks = true;
            i.max_concurrent_fetches = 2;
        });
        let fetcher = Fetcher::new(&config);
        let mut fetches = tokio::task::JoinSet::new();
        for _ in 0..FETCHES {
            let (fetcher, url) = (fetcher.clone(), server.url("/a.png"));
            fetches.spawn(async move { fetcher.fetch(&url).await });
        }
        // Two requests arrive and are held; every later one arrives only after one of the
        // held ones was released and its fetch finished.
        arrived.recv().await.unwrap();
        arrived.recv().await.unwrap();
        for _ in 2..FETCHES {
            release.add_permits(1);
            arrived.recv().await.unwrap();
        }
        release.add_permits(2);
        while let Some(result) = fetches.join_next().await {
            result.unwrap().unwrap();
        }
        assert_eq!(server.accepted(), FETCHES);
        assert_eq!(most_open.load(SeqCst), 2);
    }

    #[test]
    fn requests_carry_origin_form_and_host_with_port_only_when_needed() {
        let request = |url: &str| build_request(&parse_image_url(url).unwrap()).unwrap();
        let host = |r: &Request<Empty<Bytes>>| r.headers()[HOST].to_str().unwrap().to_owned();

        let r = request("https://Images.Example/a%20b/c.png?x=1&y=2#frag");
        assert_eq!(r.uri().to_string(), "/a%20b/c.png?x=1&y=2");
        assert_eq!(host(&r), "images.example");
        let r = request("http://images.example:80/c.png");
        assert_eq!(host(&r), "images.example");
        let r = request("https://images.example:8443/");
        assert_eq!(host(&r), "images.example:8443");
        let r = request("http://[2606:4700::1111]:8080/c.png");
        assert_eq!(host(&r), "[2606:4700::1111]:8080");
        assert_eq!(r.headers()[ACCEPT], "image/*");
        assert_eq!(r.headers()[USER_AGENT], USER_AGENT_VALUE);
    }

    #[test]
    fn tls_is_set_up_and_names_the_url_host() {
        assert!(Fetcher::new(&images(|_| {})).inner.tls.is_some());
        let name = |url: &str| server_name(&Url::parse(url).unwrap()).unwrap();
        assert_eq!(
            name("https://Images.Example/a.png"),
            ServerName::try_from("images.example").unwrap()
        );
        assert_eq!(
            name("https://127.1/a.png"),
            ServerName::from(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        assert_eq!(
            name("https://[2606:4700::1111]/a.png"),
            ServerName::from("2606:4700::1111".parse::<IpAddr>().unwrap())
        );
    }

    #[tokio::test]
    async fn an_https_url_to_a_server_without_tls_is_a_tls_error() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let url = parse_image_url(&format!("https://127.0.0.1:{port}/a.png")).unwrap();
        let error = Fetcher::new(&private_allowed())
            .fetch(&url)
            .await
            .unwrap_err();
        assert!(matches!(error, FetchError::Tls), "{error:?}");
    }

    #[test]
    fn policy_refusals_are_told_apart_from_remote_failures() {
        assert!(FetchError::NotPublic.is_policy_refusal());
        assert!(FetchError::Downgrade.is_policy_refusal());
        assert!(FetchError::UnsupportedScheme.is_policy_refusal());
        assert!(!FetchError::Connect.is_policy_refusal());
        assert!(!FetchError::Timeout { ms: 1 }.is_policy_refusal());
        assert!(!FetchError::NotAnImage.is_policy_refusal());
    }
}
