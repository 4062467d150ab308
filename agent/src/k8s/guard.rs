//! A guard between the pod watcher and an API server that may be slow, down
//! or broken. `kube` alone waits forever for a list that never comes (its
//! read timeout is off so watches can idle), buffers any body and any watch
//! line whole however large, and restarts a watch that ends cleanly at once,
//! with no back-off, so a server that closes every watch is asked again in a
//! tight loop. This layer, outermost in the client's stack, bounds all three
//! and counts each failure by reason.

use crate::lock::lock;
use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use kube::client::{Body, DynBody};
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use super::{ApiError, Kube};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A list (headers and body) or a watch's headers must arrive within this.
/// A node's pods are a few hundred kilobytes; an API server slower than
/// this is better asked again after a back-off than waited on.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest JSON document taken: a list page (500 pods) or one watch event.
/// A Pod is at most ~1.5 MiB (etcd's object limit); a page of a node's pods
/// is far below this.
pub const MAX_MESSAGE: usize = 16 << 20;
/// Watches that start closer together than this are spaced out with an
/// exponential back-off from [`WATCH_BACKOFF_MIN`] to [`WATCH_BACKOFF_MAX`].
/// A healthy watch lasts minutes (the server ends it after ~290 s).
const WATCH_CALM: Duration = Duration::from_mins(1);
const WATCH_BACKOFF_MIN: Duration = Duration::from_secs(1);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("no answer from the API server within {REQUEST_TIMEOUT:?}")]
    Timeout,
    #[error("API server answered with content type {0:?}, not JSON")]
    NotJson(String),
    #[error("API server sent a JSON document over {MAX_MESSAGE} bytes")]
    TooLarge,
}

/// Spacing of watch requests (see [`WATCH_CALM`]).
#[derive(Debug, Default)]
pub struct Pace {
    last_watch: Option<Instant>,
    backoff: Duration,
}

impl Pace {
    /// How long a watch requested at `now` waits; reserves its start.
    pub fn watch_delay(&mut self, now: Instant) -> Duration {
        let delay = match self.last_watch {
            Some(last) if now.saturating_duration_since(last) < WATCH_CALM => {
                self.backoff = (self.backoff * 2).clamp(WATCH_BACKOFF_MIN, WATCH_BACKOFF_MAX);
                (last + self.backoff).saturating_duration_since(now)
            }
            _ => {
                self.backoff = Duration::ZERO;
                Duration::ZERO
            }
        };
        self.last_watch = Some(now + delay);
        delay
    }
}

/// The layer: every service it wraps shares one pace and one set of counters.
#[derive(Clone)]
pub struct Guard {
    kube: Arc<Kube>,
    pace: Arc<Mutex<Pace>>,
}

impl Guard {
    pub fn new(kube: Arc<Kube>) -> Self {
        Self {
            kube,
            pace: Arc::default(),
        }
    }
}

impl<S> Layer<S> for Guard {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            guard: self.clone(),
        }
    }
}

pub struct Guarded<S> {
    inner: S,
    guard: Guard,
}

impl<S> Service<Request<Body>> for Guarded<S>
where
    S: Service<Request<Body>, Response = Response<Box<DynBody>>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Bounded>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Bounded>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let watch = is_watch(req.uri());
        let delay = if watch {
            lock(&self.guard.pace).watch_delay(Instant::now())
        } else {
            Duration::ZERO
        };
        // Lazy: nothing is sent before the future is first polled.
        let response = self.inner.call(req);
        let kube = self.guard.kube.clone();
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            let deadline = Instant::now() + REQUEST_TIMEOUT;
            let res = match tokio::time::timeout_at(deadline, response).await {
                Ok(Ok(res)) => res,
                Ok(Err(e)) => return Err(kube.failed(ApiError::Connection, e)),
                Err(_) => return Err(kube.failed(ApiError::Timeout, GuardError::Timeout.into())),
            };
            if !res.status().is_success() {
                // kube reads the body for a Status and reports it.
                kube.count(ApiError::Status);
            } else if let Some(kind) = res.headers().get(http::header::CONTENT_TYPE).filter(|v| {
                !v.as_bytes()
                    .to_ascii_lowercase()
                    .starts_with(b"application/json")
            }) {
                let kind = String::from_utf8_lossy(kind.as_bytes())
                    .chars()
                    .take(64)
                    .collect();
                return Err(kube.failed(ApiError::Decode, GuardError::NotJson(kind).into()));
            }
            // A watch streams for minutes: kube's idle timeout covers it.
            let deadline = (!watch).then(|| Box::pin(tokio::time::sleep_until(deadline)));
            Ok(res.map(|body| Bounded {
                inner: body,
                kube,
                line: 0,
                deadline,
                done: false,
            }))
        })
    }
}

fn is_watch(uri: &http::Uri) -> bool {
    uri.query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"))
}

/// A response body held to [`MAX_MESSAGE`] bytes between newlines (a list
/// is one document; a watch, one per line) and, for a list, to the
/// request's deadline.
pub struct Bounded {
    inner: Box<DynBody>,
    kube: Arc<Kube>,
    /// Bytes since the last newline.
    line: usize,
    deadline: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl Bounded {
    fn fail(&mut self, why: ApiError, e: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        Poll::Ready(Some(Err(self.kube.failed(why, e))))
    }
}

impl http_body::Body for Bounded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(deadline) = &mut this.deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                return this.fail(ApiError::Timeout, GuardError::Timeout.into());
            }
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.line = match data.iter().rposition(|&b| b == b'\n') {
                        Some(i) => data.len() - i - 1,
                        None => this.line + data.len(),
                    };
                    if this.line > MAX_MESSAGE {
                        return this.fail(ApiError::TooLarge, GuardError::TooLarge.into());
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            // Cut off mid-answer: kube ends a watch quietly on this, so it
            // is counted here or nowhere.
            Poll::Ready(Some(Err(e))) => this.fail(ApiError::Stream, e),
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_that_end_at_once_are_spaced_out_and_calm_resets() {
        let mut pace = Pace::default();
        let t0 = Instant::now();
        assert_eq!(pace.watch_delay(t0), Duration::ZERO);
        // Each restart right after the last waits twice as long, up to the cap.
        let mut at = t0;
        let mut delays = Vec::new();
        for _ in 0..8 {
            let d = pace.watch_delay(at);
            delays.push(d.as_secs());
            at += d;
        }
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        // A watch that lived past the calm period: the next starts at once.
        assert_eq!(pace.watch_delay(at + WATCH_CALM), Duration::ZERO);
        assert_eq!(pace.watch_delay(at + WATCH_CALM * 3), Duration::ZERO);
    }

    #[test]
    fn only_watch_requests_are_paced() {
        assert!(is_watch(
            &"/api/v1/pods?watch=true&resourceVersion=1".parse().unwrap()
        ));
        assert!(!is_watch(&"/api/v1/pods?limit=500".parse().unwrap()));
        assert!(!is_watch(&"/api/v1/pods?watchx=true".parse().unwrap()));
    }
}
