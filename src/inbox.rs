//! A shard's inbox: messages from another thread, taken off their channel as
//! they arrive, for a loop on the shard that sleeps until something is due.
//!
//! A shard loop used to look at its control channel every 50 ms, so an idle
//! shard woke 20 times a second to find nothing. [`Inbox::listen`] instead runs a
//! task that awaits the channel (flume wakes it from the sending thread) and
//! queues each message here; the loop waits for whichever comes first, its next
//! due time or [`Inbox::arrival`], and takes the messages with [`Inbox::pop`].
//! All of it lives on one executor (`Rc`, `Cell`): only the channel crosses
//! threads.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Poll, Waker};

use crate::runtime;

/// Messages received and not yet taken, and the loop waiting for one.
pub struct Inbox<T> {
    /// Received, in order, not yet taken by the loop.
    messages: RefCell<VecDeque<T>>,
    /// The task parked in [`Inbox::arrival`], if one is: only one loop waits
    /// at a time (the shard's workload loop, then its end).
    waiting: Cell<Option<Waker>>,
    /// Set when the channel has closed (the sending side is gone) or a last
    /// message was received: nothing more will come, so a wait ends at once.
    closed: Cell<bool>,
}

impl<T: 'static> Inbox<T> {
    /// An inbox fed from `channel` by a task on the current executor until
    /// the channel closes or `last(message)` says a message is the last one.
    pub fn listen(channel: flume::Receiver<T>, last: fn(&T) -> bool) -> Rc<Inbox<T>> {
        let inbox = Rc::new(Inbox {
            messages: RefCell::new(VecDeque::new()),
            waiting: Cell::new(None),
            closed: Cell::new(false),
        });
        let feeder = inbox.clone();
        runtime::spawn(async move {
            while let Ok(message) = channel.recv_async().await {
                let ends = last(&message);
                feeder.messages.borrow_mut().push_back(message);
                if ends {
                    break;
                }
                feeder.wake();
            }
            feeder.closed.set(true);
            feeder.wake();
        })
        .detach();
        inbox
    }

    /// The oldest message not yet taken.
    pub fn pop(&self) -> Option<T> {
        self.messages.borrow_mut().pop_front()
    }

    /// Whether nothing more can arrive (the channel closed, or the last
    /// message came).
    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Resolves once a message is waiting to be taken, or nothing more can come.
    pub async fn arrival(&self) {
        std::future::poll_fn(|cx| {
            if self.closed.get() || !self.messages.borrow().is_empty() {
                Poll::Ready(())
            } else {
                self.waiting.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    fn wake(&self) {
        if let Some(waker) = self.waiting.take() {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn messages_arrive_in_order_and_a_closed_channel_ends_the_wait() {
        let (sender, receiver) = flume::bounded::<u32>(8);
        let spec = runtime::ExecutorSpec {
            name: "pc-test-inbox".into(),
            cpu: None,
            io_memory_bytes: 64 << 10,
        };
        let sent = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            sender.send(1).unwrap();
            sender.send(2).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            drop(sender);
        });
        let executor = runtime::start(&spec, move || async move {
            let inbox = Inbox::listen(receiver, |_| false);
            let mut got = Vec::new();
            while !inbox.is_closed() || got.len() < 2 {
                inbox.arrival().await;
                while let Some(message) = inbox.pop() {
                    got.push(message);
                }
                if inbox.is_closed() {
                    break;
                }
            }
            (got, inbox.is_closed())
        })
        .unwrap();
        let (got, closed) = executor.join().unwrap();
        sent.join().unwrap();
        assert_eq!(got, vec![1, 2]);
        assert!(closed, "the wait ends when the sender is gone");
    }

    #[test]
    fn the_last_message_closes_the_inbox() {
        let (sender, receiver) = flume::bounded::<u32>(8);
        sender.send(7).unwrap();
        sender.send(0).unwrap();
        sender.send(9).unwrap();
        let spec = runtime::ExecutorSpec {
            name: "pc-test-inbox".into(),
            cpu: None,
            io_memory_bytes: 64 << 10,
        };
        let executor = runtime::start(&spec, move || async move {
            let inbox = Inbox::listen(receiver, |&message| message == 0);
            inbox.arrival().await;
            runtime::sleep(Duration::from_millis(5)).await;
            let mut got = Vec::new();
            while let Some(message) = inbox.pop() {
                got.push(message);
            }
            (got, inbox.is_closed())
        })
        .unwrap();
        let (got, closed) = executor.join().unwrap();
        assert_eq!(got, vec![7, 0], "nothing after the last message is taken");
        assert!(closed);
        drop(sender);
    }
}
