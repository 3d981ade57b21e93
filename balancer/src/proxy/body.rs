//! Bodies that keep request accounting alive until they are dropped, and
//! small local responses.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};

use super::upstream::{BoxError, ProxyBody};

pin_project_lite::pin_project! {
    /// Wraps a body together with guards (in-flight counts) that are released
    /// when the body is dropped, i.e. when the response is fully sent or the
    /// client goes away.
    pub struct Guarded<B, G> {
        #[pin]
        inner: B,
        guard: G,
    }
}

impl<B, G> Guarded<B, G> {
    /// Wraps `inner`, holding `guard` until drop.
    pub fn new(inner: B, guard: G) -> Self {
        Self { inner, guard }
    }
}

impl<B: Body, G> Body for Guarded<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// Signals when a request body has been sent in full (or dropped), so
    /// the response timeout can start then.
    pub struct SentSignal<B> {
        #[pin]
        inner: B,
        signal: Signal,
    }
}

/// Fires a oneshot once, at the latest on drop.
struct Signal(Option<tokio::sync::oneshot::Sender<()>>);

impl Signal {
    fn fire(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Signal {
    fn drop(&mut self) {
        self.fire();
    }
}

impl<B> SentSignal<B> {
    /// Wraps `inner`; `sent` fires when it ends or is dropped.
    pub fn new(inner: B, sent: tokio::sync::oneshot::Sender<()>) -> Self {
        Self {
            inner,
            signal: Signal(Some(sent)),
        }
    }
}

impl<B: Body> Body for SentSignal<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.signal.fire();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that can be sent again while no attempt has read it: the
/// body waits in a shared slot, and the first poll takes it out. After a
/// failed attempt, [`Reclaimable::unread`] says whether that attempt never
/// read a byte (a refused connection), so the request can go elsewhere with
/// its body intact, whatever its method or size, without buffering it.
#[derive(Clone)]
pub struct Reclaimable(
    std::sync::Arc<std::sync::Mutex<Option<ProxyBody>>>,
    BodyRead,
);

impl Reclaimable {
    /// Holds `body` until an attempt polls it; `read` is marked when an
    /// attempt reads it to its end.
    pub fn new(body: ProxyBody, read: BodyRead) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(Some(body))), read)
    }

    /// The body for one attempt: it takes the held body on its first poll.
    pub fn attempt(&self) -> ProxyBody {
        let (end, hint) = {
            let slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
            slot.as_ref().map_or((true, SizeHint::with_exact(0)), |b| {
                (b.is_end_stream(), b.size_hint())
            })
        };
        ReclaimBody {
            slot: self.0.clone(),
            read: self.1.clone(),
            taken: None,
            end,
            hint,
        }
        .boxed_unsync()
    }

    /// Whether the body is still unread: no attempt has polled it.
    pub fn unread(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }
}

/// An attempt found its body already taken by an earlier one.
#[derive(Debug, thiserror::Error)]
#[error("the request body was already sent by an earlier attempt")]
struct BodyAlreadySent;

/// One attempt's view of a [`Reclaimable`] body.
struct ReclaimBody {
    slot: std::sync::Arc<std::sync::Mutex<Option<ProxyBody>>>,
    read: BodyRead,
    taken: Option<ProxyBody>,
    end: bool,
    hint: SizeHint,
}

impl Body for ReclaimBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.taken.is_none() {
            let body = self.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            match body {
                Some(b) => self.taken = Some(b),
                // Another attempt read it: ending here would send a
                // truncated body, so this attempt fails instead.
                None => return Poll::Ready(Some(Err(BodyAlreadySent.into()))),
            }
        }
        let Some(b) = self.taken.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(&mut *b).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || b.is_end_stream() {
            self.read.mark();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.taken.as_ref().map_or(self.end, Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.taken.as_ref().map_or(self.hint, Body::size_hint)
    }
}

/// An empty body.
pub fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A plain-text response generated by the balancer itself.
pub fn local(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let body = Full::new(Bytes::from(format!("{message}\n")))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Whether a request's body has been read to its end, shared between the
/// request path, which reads it, and the answer, which must say
/// `Connection: close` on HTTP/1 if it has not (hyper then closes the
/// connection rather than reuse it with unread bytes).
#[derive(Debug, Clone, Default)]
pub struct BodyRead(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl BodyRead {
    /// Whether the body has been read to its end.
    pub fn done(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    fn mark(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Boxes any body with a boxable error.
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reclaimable_body_goes_to_the_first_attempt_that_reads_it() {
        let read = BodyRead::default();
        let body = Reclaimable::new(
            boxed(Full::new(Bytes::from_static(b"answer=42"))),
            read.clone(),
        );
        // An attempt that is dropped unread (a refused connection) leaves it.
        let unread = body.attempt();
        assert_eq!(unread.size_hint().exact(), Some(9));
        drop(unread);
        assert!(body.unread());
        assert!(!read.done());
        let sent = body.attempt().collect().await.unwrap().to_bytes();
        assert_eq!(&sent[..], b"answer=42");
        assert!(!body.unread());
        assert!(read.done(), "read to its end");
        // A later attempt never sends a truncated body.
        assert!(body.attempt().collect().await.is_err());
    }
}
