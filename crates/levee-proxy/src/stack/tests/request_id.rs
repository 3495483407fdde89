use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use tower::{Layer, Service, ServiceExt};

use crate::body::ProxyBody;
use crate::headers::X_REQUEST_ID;
use crate::stack::request_id::{self, RequestIdLayer};

/// What the inner service saw, and a response that carries the node's own id.
async fn through(id: Option<&str>) -> (Option<HeaderValue>, HeaderValue) {
    let seen = Arc::new(Mutex::new(None));
    let inner = {
        let seen = Arc::clone(&seen);
        tower::service_fn(move |req: Request<()>| {
            *seen.lock().unwrap() = req.headers().get(X_REQUEST_ID).cloned();
            async {
                let mut resp = Response::new(ProxyBody::local(Bytes::new()));
                resp.headers_mut()
                    .insert(X_REQUEST_ID, HeaderValue::from_static("node-own"));
                Ok::<_, std::convert::Infallible>(resp)
            }
        })
    };
    let mut svc = RequestIdLayer.layer(inner);
    let mut req = Request::new(());
    if let Some(id) = id {
        req.headers_mut()
            .insert(X_REQUEST_ID, HeaderValue::from_str(id).unwrap());
    }
    let resp = svc.ready().await.unwrap().call(req).await.unwrap();
    // As hyper's HTTP/2 server gets it; levee's HTTP/1 writer is tested
    // with the head it writes (h1::server tests).
    let resp = request_id::stamp(resp);
    let sent = seen.lock().unwrap().clone();
    (sent, resp.headers()[X_REQUEST_ID].clone())
}

#[tokio::test]
async fn a_usable_client_id_goes_to_the_node_and_back_to_the_client() {
    let (sent, back) = through(Some("req-42")).await;
    assert_eq!(sent.unwrap(), "req-42");
    assert_eq!(back, "req-42", "the client sees the id the node was sent");
}

#[tokio::test]
async fn a_missing_or_unusable_id_is_replaced_by_a_new_one() {
    for id in [None, Some(""), Some("has space"), Some(&*"x".repeat(129))] {
        let (sent, back) = through(id).await;
        let sent = sent.expect("the node gets an id");
        assert_eq!(sent.len(), 32, "{id:?}");
        assert_eq!(back, sent, "{id:?}");
    }
}
