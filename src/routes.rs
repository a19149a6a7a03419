//! The router: which path and method go where. The chat stack is the only route with
//! layers of its own; the rest answer from memory. Unknown paths are 404 `not_found`, known
//! paths with the wrong method 405 `method_not_allowed`.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tower::Service;

use crate::body::ResponseBody;
use crate::error::{GatewayError, bounded};
use crate::health::{Readiness, ReadyState};
use crate::keys::{Caller, KeyTable};
use crate::layer::checkpoint::{CheckedFuture, Handle};
use crate::layer::read_body::drain_unread;
use crate::metrics::Metrics;
use crate::models::ModelTable;

/// A chat stack (chat completions, or inspect), shared by every request: called through
/// `&self`, one boxed future a request.
#[derive(Clone)]
pub struct ChatService(Arc<dyn Handle<Incoming>>);

impl ChatService {
    pub fn new(stack: impl Handle<Incoming> + 'static) -> Self {
        Self(Arc::new(stack))
    }
}

/// Dispatches by path and method. Every connection clones the service stack once, so the
/// router is one shared pointer to its [`Routes`].
#[derive(Clone)]
pub struct Router(Arc<Routes>);

impl Router {
    pub fn new(routes: Routes) -> Self {
        Self(Arc::new(routes))
    }
}

/// What the router dispatches to.
pub struct Routes {
    pub chat: ChatService,
    /// `POST /gateway/inspect`: the chat checks without the upstream.
    pub inspect: ChatService,
    pub models: Arc<ModelTable>,
    /// Who may list which models (`/v1/models` is per key when keys exist).
    pub keys: Arc<KeyTable>,
    pub readiness: Readiness,
    /// `Some` when `/metrics` is served on this listener.
    pub metrics: Option<Arc<Metrics>>,
    /// Serve the browser playground (`/playground` and its script and stylesheet).
    pub playground: bool,
}

impl Service<Request<Incoming>> for Router {
    type Response = Response<ResponseBody>;
    type Error = GatewayError;
    /// The chat stack's own future as is; the answers made on the spot are boxed too
    /// (those routes are cold).
    type Future = CheckedFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let routes = &*self.0;
        let path = req.uri().path();
        let method = req.method();
        let answer = match path {
            "/v1/chat/completions" => {
                if method == Method::POST {
                    return routes.chat.0.handle(req);
                }
                Err(wrong_method(path, method, "POST"))
            }
            "/gateway/inspect" => {
                if method == Method::POST {
                    return routes.inspect.0.handle(req);
                }
                Err(wrong_method(path, method, "POST"))
            }
            "/v1/models" => get_only(path, method)
                .and_then(|()| {
                    routes
                        .keys
                        .authenticate_request(req.headers(), req.extensions())
                })
                .map(|caller| {
                    let body = match caller {
                        Some(Caller(key)) => key.models_json.clone(),
                        None => routes.models.list_json(),
                    };
                    json(StatusCode::OK, body)
                }),
            "/healthz" => get_only(path, method)
                .map(|()| json(StatusCode::OK, Bytes::from_static(b"{\"status\":\"ok\"}"))),
            "/readyz" => get_only(path, method).and_then(|()| match routes.readiness.state() {
                ReadyState::Ready => Ok(json(
                    StatusCode::OK,
                    Bytes::from_static(b"{\"status\":\"ready\"}"),
                )),
                ReadyState::Starting => Err(GatewayError::Starting),
                ReadyState::Draining => Err(GatewayError::ShuttingDown),
                ReadyState::UpstreamsSilent => Err(GatewayError::UpstreamsSilent),
            }),
            "/metrics" if routes.metrics.is_some() => get_only(path, method).and_then(|()| {
                routes
                    .metrics
                    .as_deref()
                    .map(metrics_response)
                    .ok_or(GatewayError::Internal("metrics route without a registry"))
            }),
            // The page, its script and stylesheet, compiled in (playground.rs).
            p if routes.playground && p.starts_with(crate::playground::PATH) => {
                get_only(path, method).and_then(|()| {
                    crate::playground::response(p, req.headers()).ok_or_else(|| {
                        GatewayError::RouteNotFound {
                            path: bounded(path),
                        }
                    })
                })
            }
            _ => match path.strip_prefix("/v1/models/") {
                Some(id) => get_only(path, method).and_then(|()| {
                    let id = percent_decode(id);
                    if let Some(Caller(key)) = routes
                        .keys
                        .authenticate_request(req.headers(), req.extensions())?
                        && !key.models.allows(&id)
                    {
                        return Err(GatewayError::ModelNotPermitted {
                            key: key.name.clone(),
                            model: bounded(&id),
                        });
                    }
                    routes
                        .models
                        .model_json(&id)
                        .map(|b| json(StatusCode::OK, b))
                        .ok_or_else(|| GatewayError::model_not_found(&id))
                }),
                None => Err(GatewayError::RouteNotFound {
                    path: bounded(path),
                }),
            },
        };
        if http_body::Body::is_end_stream(req.body()) {
            return Box::pin(std::future::ready(answer));
        }
        // A body nothing here reads (a 404 or 405 to a POST): discarded first, as admission
        // does for its refusals, so the connection stays usable.
        let (head, mut body) = req.into_parts();
        Box::pin(async move {
            drain_unread(&head, &mut body).await;
            answer
        })
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn get_only(path: &str, method: &Method) -> Result<(), GatewayError> {
    if method == Method::GET || method == Method::HEAD {
        Ok(())
    } else {
        Err(wrong_method(path, method, "GET"))
    }
}

fn wrong_method(path: &str, method: &Method, allowed: &'static str) -> GatewayError {
    GatewayError::MethodNotAllowed {
        path: bounded(path),
        method: bounded(method.as_str()),
        allowed,
    }
}

/// The `/metrics` response.
pub fn metrics_response(m: &Metrics) -> Response<ResponseBody> {
    let mut res = Response::new(ResponseBody::full(m.encode()));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    res
}

fn json(status: StatusCode, body: Bytes) -> Response<ResponseBody> {
    let mut res = Response::new(ResponseBody::full(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// The service of a metrics-only listener (`server.metrics_listen`): `GET /metrics`, else 404.
#[derive(Debug, Clone)]
pub struct MetricsOnly(pub Arc<Metrics>);

impl Service<Request<Incoming>> for MetricsOnly {
    type Response = Response<ResponseBody>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Response<ResponseBody>, std::convert::Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let res = match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => metrics_response(&self.0),
            _ => crate::layer::error_response::into_response(&GatewayError::RouteNotFound {
                path: bounded(req.uri().path()),
            }),
        };
        std::future::ready(Ok(res))
    }
}
