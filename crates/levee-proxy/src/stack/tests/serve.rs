use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::service::Service as _;
use tower::Service;

use crate::stack::serve::Serve;

/// Answers each request with the number of calls this instance has served;
/// counts its clones.
struct Counting {
    calls: usize,
    clones: Arc<AtomicUsize>,
    ready: bool,
}

impl Clone for Counting {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, Ordering::Relaxed);
        Self {
            calls: self.calls,
            clones: Arc::clone(&self.clones),
            ready: self.ready,
        }
    }
}

impl Service<()> for Counting {
    type Response = usize;
    type Error = Infallible;
    type Future = Ready<Result<usize, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.ready {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, (): ()) -> Self::Future {
        self.calls += 1;
        ready(Ok(self.calls))
    }
}

fn counting(ready: bool) -> (Serve<Counting>, Arc<AtomicUsize>) {
    let clones = Arc::new(AtomicUsize::new(0));
    let stack = Counting {
        calls: 0,
        clones: Arc::clone(&clones),
        ready,
    };
    (Serve::new(stack), clones)
}

#[tokio::test]
async fn every_request_is_served_by_the_connections_one_stack_never_a_clone() {
    let (serve, clones) = counting(true);
    assert_eq!(serve.call(()).await.unwrap(), 1);
    assert_eq!(
        serve.call(()).await.unwrap(),
        2,
        "the same stack, called in place"
    );
    assert_eq!(clones.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_stack_that_is_not_ready_at_once_fails_the_request_instead_of_waiting() {
    let (serve, _) = counting(false);
    assert!(serve.call(()).await.is_err());
}
