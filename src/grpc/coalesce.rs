//! Write coalescing for HTTP/2 connections on a thread-per-core executor.
//!
//! On loopback and fast LANs a `send` syscall costs more than everything else a
//! unary call does (the sender also pays for TCP delivery to the peer). h2 flushes
//! each time its connection task runs; if that task runs after every job task
//! that queued a frame, each frame costs a syscall. [`CoalescingStream`] defers
//! the first flush of a batch by one turn of the executor's run queue: the
//! connection task re-queues itself, the job tasks already woken queue their
//! frames too, and the next flush sends them all in one `send`. The delay is one
//! scheduler round, not a timer — but a round can hold many job tasks, so it is
//! only taken when another call is in flight on the connection to batch with: a
//! lone call is sent at once.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes buffered before a write goes out without waiting for a flush.
const MAX_BUFFERED: usize = 256 * 1024;

/// A stream whose writes are gathered and sent at most once per executor round.
pub struct CoalescingStream<S> {
    /// The underlying socket.
    inner: S,
    /// Bytes accepted from h2 and not yet written to `inner`.
    pending: Vec<u8>,
    /// How much of `pending` has been written already (a partial write).
    written: usize,
    /// Whether this flush has already yielded once; the next poll sends.
    yielded: bool,
    /// Calls in flight on this connection (kept by its owner): batching waits
    /// only when there is more than one.
    calls_in_flight: Rc<Cell<usize>>,
}

impl<S> CoalescingStream<S> {
    pub fn new(inner: S, calls_in_flight: Rc<Cell<usize>>) -> CoalescingStream<S> {
        CoalescingStream {
            inner,
            pending: Vec::with_capacity(16 * 1024),
            written: 0,
            yielded: false,
            calls_in_flight,
        }
    }
}

impl<S: AsyncWrite + Unpin> CoalescingStream<S> {
    /// Writes out everything pending.
    fn poll_send_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CoalescingStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CoalescingStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pending.len() >= MAX_BUFFERED {
            // Bound memory: push out what we have before taking more.
            match self.poll_send_pending(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.pending.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            return Pin::new(&mut self.inner).poll_flush(cx);
        }
        if !self.yielded && self.calls_in_flight.get() > 1 {
            // Let the tasks already woken queue their frames first.
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match self.poll_send_pending(cx) {
            Poll::Ready(Ok(())) => {
                self.yielded = false;
                Pin::new(&mut self.inner).poll_flush(cx)
            }
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.poll_send_pending(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records each write call the inner stream sees.
    #[derive(Default, Clone)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.lock().unwrap().push(data.to_vec());
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn writes_before_the_deferred_flush_go_out_in_one_call() {
        let recorder = Recorder::default();
        let calls = Rc::new(Cell::new(2));
        let mut stream = CoalescingStream::new(recorder.clone(), calls.clone());
        let waker = futures_lite::future::block_on(std::future::poll_fn(|cx| {
            Poll::Ready(cx.waker().clone())
        }));
        let mut cx = Context::from_waker(&waker);
        let mut stream = Pin::new(&mut stream);
        assert!(matches!(
            stream.as_mut().poll_write(&mut cx, b"one"),
            Poll::Ready(Ok(3))
        ));
        // First flush yields, nothing written yet.
        assert!(stream.as_mut().poll_flush(&mut cx).is_pending());
        assert!(recorder.0.lock().unwrap().is_empty());
        assert!(matches!(
            stream.as_mut().poll_write(&mut cx, b"two"),
            Poll::Ready(Ok(3))
        ));
        assert!(matches!(
            stream.as_mut().poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(*recorder.0.lock().unwrap(), vec![b"onetwo".to_vec()]);
        // Nothing pending: flush passes straight through.
        assert!(matches!(
            stream.as_mut().poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        // A lone call is not held back.
        calls.set(1);
        assert!(matches!(
            stream.as_mut().poll_write(&mut cx, b"three"),
            Poll::Ready(Ok(5))
        ));
        assert!(matches!(
            stream.as_mut().poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(recorder.0.lock().unwrap().last().unwrap(), b"three");
    }
}
