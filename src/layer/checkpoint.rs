//! A checkpoint is one validation step of the chat stack: it takes the request's head and a
//! body of type `In` and returns a body of type `Out` or a [`GatewayError`]. It never builds
//! a response (`error_response` does).
//! [`CheckpointLayer`] puts any checkpoint into the tower stack, so each check is a small
//! type with its own file and doc, and the type of the request says what has been checked.
//! Consecutive checkpoints are joined with [`Checkpoint::then`] into one layer: the steps
//! stay separate types, the request pays for one boxed future instead of one per step.
//! The head (`http::request::Parts`, about 200 bytes) stays in that future and is lent to
//! each step: only the body moves from step to step.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::request::Parts;
use http::{Request, Response};
use tower::{Layer, Service};

use crate::body::ResponseBody;
use crate::error::GatewayError;
use crate::per_worker::PerWorker;

/// One validation step.
pub trait Checkpoint<In>: Clone + Send + Sync + 'static {
    /// What the request body becomes once checked.
    type Out: Send + 'static;

    /// Checks (and possibly transforms) the request. `head` may be edited (a header
    /// removed, an extension added); the body is consumed and its next form returned.
    /// A check that never waits does its work here and returns `std::future::ready`: the
    /// request's future then holds its result, not a state machine keeping its arguments.
    fn check(
        &self,
        head: &mut Parts,
        body: In,
    ) -> impl Future<Output = Result<Self::Out, GatewayError>> + Send;

    /// This checkpoint, then `next` on what it returns: one checkpoint for the pair, so a
    /// chain of them costs one boxed future per request, not one per step.
    fn then<B>(self, next: B) -> Then<Self, B>
    where
        Self: Sized,
        B: Checkpoint<Self::Out>,
    {
        Then(self, next)
    }
}

/// Implements [`Checkpoint`] for a step that never waits, from its inherent
/// `check_now(&self, &mut Parts, In) -> Result<Out, GatewayError>`: the step runs when the
/// chain reaches it and answers with a ready future.
macro_rules! checks_now {
    ($step:ty, $in:ty => $out:ty) => {
        impl $crate::layer::checkpoint::Checkpoint<$in> for $step {
            type Out = $out;

            fn check(
                &self,
                head: &mut ::http::request::Parts,
                body: $in,
            ) -> impl ::std::future::Future<Output = Result<$out, $crate::error::GatewayError>> + Send
            {
                ::std::future::ready(self.check_now(head, body))
            }
        }
    };
}
pub(crate) use checks_now;

/// Two checkpoints in sequence (see [`Checkpoint::then`]).
#[derive(Debug, Clone)]
pub struct Then<A, B>(A, B);

impl<In, A, B> Checkpoint<In> for Then<A, B>
where
    In: Send + 'static,
    A: Checkpoint<In>,
    B: Checkpoint<A::Out>,
{
    type Out = B::Out;

    async fn check(&self, head: &mut Parts, body: In) -> Result<B::Out, GatewayError> {
        let checked = self.0.check(head, body).await?;
        self.1.check(head, checked).await
    }
}

/// Wraps a service with a checkpoint in front of it.
#[derive(Debug, Clone)]
pub struct CheckpointLayer<C>(pub C);

impl<C: Clone, S> Layer<S> for CheckpointLayer<C> {
    type Service = Checked<C, S>;

    fn layer(&self, inner: S) -> Self::Service {
        Checked {
            steps: PerWorker::new(Arc::new(Steps {
                check: self.0.clone(),
                inner,
            })),
        }
    }
}

/// What a chain of checkpoints ends in: the handler of a fully checked request (the
/// upstream, the inspect report). Called through `&self`, with no readiness step and no box
/// of its own: its future lives inside the request's one boxed future.
pub trait Endpoint<Req>: Clone + Send + Sync + 'static {
    fn call(
        &self,
        req: Req,
    ) -> impl Future<Output = Result<Response<ResponseBody>, GatewayError>> + Send;
}

/// A service behind a checkpoint.
#[derive(Debug, Clone)]
pub struct Checked<C, S> {
    /// Each request's future holds its worker's handle to the steps: cloning the steps
    /// themselves would write the shared counts of every `Arc` they hold (model table,
    /// keys, image pipeline), lines both cores write on every request.
    steps: PerWorker<Steps<C, S>>,
}

/// The checkpoint chain and the endpoint after it.
#[derive(Debug)]
struct Steps<C, S> {
    check: C,
    inner: S,
}

/// The response future of a checked stack: one box per request.
pub type CheckedFuture =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, GatewayError>> + Send>>;

impl<C, S> Checked<C, S> {
    /// Checks the request, then calls the endpoint.
    /// Needs only `&self`: the request's future holds its worker's handle to the steps.
    fn respond<In>(&self, req: Request<In>) -> CheckedFuture
    where
        C: Checkpoint<In>,
        In: Send + 'static,
        S: Endpoint<Request<C::Out>>,
    {
        let steps = self.steps.local();
        // Split here, not in the future: it would keep the request whole as well as its parts.
        let (mut head, body) = req.into_parts();
        Box::pin(async move {
            let body = steps.check.check(&mut head, body).await?;
            steps.inner.call(Request::from_parts(head, body)).await
        })
    }
}

impl<C, S, In> Service<Request<In>> for Checked<C, S>
where
    C: Checkpoint<In>,
    In: Send + 'static,
    S: Endpoint<Request<C::Out>>,
{
    type Response = Response<ResponseBody>;
    type Error = GatewayError;
    type Future = CheckedFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Checkpoints and endpoints have no readiness of their own.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<In>) -> Self::Future {
        self.respond(req)
    }
}

/// A checked stack called through a shared reference, so one copy can serve every request
/// (behind `Arc<dyn Handle>`) without a clone and a second box per request, which a boxed
/// tower service would cost. Always ready, like [`Checked`].
pub trait Handle<In>: Send + Sync {
    fn handle(&self, req: Request<In>) -> CheckedFuture;
}

impl<C, S, In> Handle<In> for Checked<C, S>
where
    C: Checkpoint<In>,
    In: Send + 'static,
    S: Endpoint<Request<C::Out>>,
{
    fn handle(&self, req: Request<In>) -> CheckedFuture {
        self.respond(req)
    }
}
