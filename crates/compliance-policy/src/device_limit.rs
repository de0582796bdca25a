//! A cap on the requests one device has in flight at once, streams included.
//!
//! A device (found as the [enforcement layer](crate::enforce) finds it: the configured header
//! on EWS, the `DeviceId` query parameter on ActiveSync) may have at most `max` requests in
//! flight; a request counts from its call until its response body is dropped, so an open
//! `GetStreamingEvents` stream or ActiveSync `Ping` holds its slot for as long as it lasts.
//! Beyond the cap the request gets what Exchange's own throttling answers: `503` with an EWS
//! SOAP fault `ErrorServerBusy` and `Retry-After`, and nothing reaches Exchange. Requests that
//! name no device are not counted here (the enforcement layer refuses them as unknown devices).
//!
//! Why: one misbehaving or hostile client (a looping sync, a flood of streaming subscriptions
//! under a stolen device id) must not take the connections to Exchange and the gateway's memory
//! from every other device. Exchange's throttling policy caps EWS concurrency per user
//! (`EWSMaxConcurrency`, 27 by default); this caps it per device before Exchange sees it.
//!
//! Counts are kept per 64-bit hash of the lower-cased device id in a few locked shards, so a
//! request allocates nothing here; two ids with the same hash would share a count, which
//! only ever makes the cap stricter.
//!
//! ```
//! use compliance_policy::device_limit::DeviceLimitLayer;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let mut service = ServiceBuilder::new()
//!     .layer(DeviceLimitLayer::new(1))
//!     .service_fn(|_request: Request<Full<Bytes>>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::from("from exchange")))
//!     });
//! let request = || Request::post("/EWS/Exchange.asmx").header("x-device-id", "EASDEV1").body(Full::default());
//! // The first response is held (its body not yet dropped): the device is at its cap.
//! let first = service.ready().await?.call(request()?).await?;
//! let second = service.ready().await?.call(request()?).await?;
//! assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
//! drop(first);
//! let third = service.ready().await?.call(request()?).await?;
//! assert_eq!(third.status(), StatusCode::OK);
//! # Ok(())
//! # }
//! ```

use crate::enforce::DEFAULT_DEVICE_ID_HEADER;
use bytes::Bytes;
use ews_proxy_core::activesync::ActiveSyncQuery;
use ews_proxy_core::fault::{FaultCode, SoapFault};
use ews_proxy_core::routing::is_activesync_path;
use http::header::RETRY_AFTER;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use tower::{Layer, Service};

/// Shards of the count map: enough that two workers rarely meet on one lock.
const SHARDS: usize = 16;

/// Layer that applies [`DeviceLimit`]. Clones share the counts.
#[derive(Clone, Debug)]
pub struct DeviceLimitLayer {
    counts: Option<Arc<Counts>>,
    device_header: HeaderName,
}

impl DeviceLimitLayer {
    /// At most `max` requests in flight per device (`max` of at least 1).
    pub fn new(max: u32) -> Self {
        DeviceLimitLayer {
            counts: Some(Arc::new(Counts::new(max.max(1)))),
            device_header: DEFAULT_DEVICE_ID_HEADER,
        }
    }

    /// A layer that counts nothing and refuses nothing: the same service type as a limited
    /// one, for stacks where the cap is optional.
    pub fn unlimited() -> Self {
        DeviceLimitLayer {
            counts: None,
            device_header: DEFAULT_DEVICE_ID_HEADER,
        }
    }

    /// Reads the EWS device id from `header` instead of `X-Device-Id`.
    pub fn with_device_header(mut self, header: HeaderName) -> Self {
        self.device_header = header;
        self
    }

    /// Requests refused so far because their device was at its cap.
    pub fn refused(&self) -> u64 {
        self.counts
            .as_ref()
            .map_or(0, |counts| counts.refused.load(Ordering::Relaxed))
    }

    /// The requests `device` has in flight now.
    pub fn in_flight(&self, device: &str) -> u32 {
        let Some(counts) = &self.counts else { return 0 };
        let key = counts.key(device);
        *lock(counts.shard(key)).get(&key).unwrap_or(&0)
    }
}

impl<S> Layer<S> for DeviceLimitLayer {
    type Service = DeviceLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeviceLimit {
            inner,
            counts: self.counts.clone(),
            device_header: self.device_header.clone(),
        }
    }
}

/// Refuses a request with `503 ErrorServerBusy` when its device already has the maximum of
/// requests in flight; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct DeviceLimit<S> {
    inner: S,
    counts: Option<Arc<Counts>>,
    device_header: HeaderName,
}

#[derive(Debug)]
struct Counts {
    max: u32,
    hasher: foldhash::fast::RandomState,
    shards: [Mutex<HashMap<u64, u32>>; SHARDS],
    refused: AtomicU64,
}

impl Counts {
    fn new(max: u32) -> Self {
        Counts {
            max,
            hasher: foldhash::fast::RandomState::default(),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            refused: AtomicU64::new(0),
        }
    }

    /// Device ids are matched without regard to ASCII case, as in the view.
    fn key(&self, device: &str) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        for byte in device.bytes() {
            hasher.write_u8(byte.to_ascii_lowercase());
        }
        hasher.finish()
    }

    fn shard(&self, key: u64) -> &Mutex<HashMap<u64, u32>> {
        &self.shards[(key as usize) % SHARDS]
    }

    /// A slot for the device with `key`, unless it is at its cap.
    fn acquire(self: &Arc<Self>, key: u64) -> Option<Slot> {
        let mut shard = lock(self.shard(key));
        let count = shard.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Slot {
            counts: self.clone(),
            key,
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A count map is valid whatever a panicking holder left: take it back.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One request's place in its device's count, given back when dropped.
#[derive(Debug)]
struct Slot {
    counts: Arc<Counts>,
    key: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut shard = lock(self.counts.shard(self.key));
        if let Some(count) = shard.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                // No entry is kept for a device with nothing in flight: the map stays as small
                // as the set of busy devices.
                shard.remove(&self.key);
            }
        }
    }
}

/// The device a request names: the `DeviceId` query parameter on ActiveSync (plain or
/// base64-encoded, [`ActiveSyncQuery`]), `header` on EWS.
fn device_of<'a, B>(
    request: &'a Request<B>,
    header: &HeaderName,
) -> Option<std::borrow::Cow<'a, str>> {
    if is_activesync_path(request.uri().path()) {
        // Never empty: the reader takes an empty value for none.
        return ActiveSyncQuery::parse(request.uri().query().unwrap_or("")).device_id;
    }
    request
        .headers()
        .get(header)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(std::borrow::Cow::Borrowed)
}

impl<S, B, ResBody> Service<Request<B>> for DeviceLimit<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<HoldsSlot<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let Some(counts) = &self.counts else {
            return ResponseFuture::called(self.inner.call(request), None);
        };
        let Some(device) = device_of(&request, &self.device_header) else {
            return ResponseFuture::called(self.inner.call(request), None);
        };
        let key = counts.key(&device);
        match counts.acquire(key) {
            Some(slot) => ResponseFuture::called(self.inner.call(request), Some(slot)),
            None => {
                counts.refused.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    device = &*device,
                    max = counts.max,
                    "device at its cap of requests in flight: 503"
                );
                let fault = SoapFault::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    FaultCode::ServerBusy,
                    format!(
                        "the device already has {} requests in flight at the gateway; retry later",
                        counts.max
                    ),
                )
                .with_reason("device-limit");
                let mut response: Response<ResBody> = fault.into_response();
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                ResponseFuture {
                    kind: Kind::Refused {
                        response: Some(response),
                    },
                }
            }
        }
    }
}

pin_project! {
    /// Response future of [`DeviceLimit`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Called { #[pin] inner: F, slot: Option<Slot> },
        Refused { response: Option<Response<B>> },
    }
}

impl<F, B> ResponseFuture<F, B> {
    fn called(inner: F, slot: Option<Slot>) -> Self {
        ResponseFuture {
            kind: Kind::Called { inner, slot },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<HoldsSlot<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { inner, slot } => {
                // An error drops the slot with the future: nothing is in flight any more.
                let response = ready!(inner.poll(cx))?;
                let slot = slot.take();
                Poll::Ready(Ok(response.map(|inner| HoldsSlot { inner, slot })))
            }
            KindProj::Refused { response } => {
                let response = response
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready(Ok(response.map(|inner| HoldsSlot { inner, slot: None })))
            }
        }
    }
}

pin_project! {
    /// A response body that keeps its request's place in the device's count until it is
    /// dropped (read to the end, or abandoned).
    pub struct HoldsSlot<B> {
        #[pin]
        inner: B,
        slot: Option<Slot>,
    }
}

impl<B: From<Bytes>> From<Bytes> for HoldsSlot<B> {
    fn from(bytes: Bytes) -> Self {
        HoldsSlot {
            inner: B::from(bytes),
            slot: None,
        }
    }
}

impl<B: Body> Body for HoldsSlot<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::convert::Infallible;
    use tower::{ServiceExt, service_fn};

    type Answer = Response<Full<Bytes>>;

    fn limited(
        layer: &DeviceLimitLayer,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<HoldsSlot<Full<Bytes>>>,
        Error = Infallible,
    > + Clone {
        layer.layer(service_fn(|_request: Request<Full<Bytes>>| async {
            Ok::<Answer, Infallible>(Response::new(Full::from("from exchange")))
        }))
    }

    fn ews(device: &str) -> Request<Full<Bytes>> {
        Request::post("/EWS/Exchange.asmx")
            .header("x-device-id", device)
            .body(Full::default())
            .unwrap()
    }

    fn activesync(device: &str) -> Request<Full<Bytes>> {
        Request::post(format!(
            "/Microsoft-Server-ActiveSync?Cmd=Ping&User=alice&DeviceId={device}&DeviceType=iPhone"
        ))
        .body(Full::default())
        .unwrap()
    }

    #[tokio::test]
    async fn the_request_beyond_the_cap_gets_503_server_busy_and_never_reaches_exchange() {
        let layer = DeviceLimitLayer::new(2);
        let calls = Arc::new(AtomicU64::new(0));
        let counted = calls.clone();
        let mut service = layer.layer(service_fn(move |_request: Request<Full<Bytes>>| {
            counted.fetch_add(1, Ordering::Relaxed);
            async { Ok::<Answer, Infallible>(Response::new(Full::from("from exchange"))) }
        }));
        let first = service
            .ready()
            .await
            .unwrap()
            .call(ews("EASDEV1"))
            .await
            .unwrap();
        let second = service
            .ready()
            .await
            .unwrap()
            .call(ews("easdev1"))
            .await
            .unwrap();
        let third = service
            .ready()
            .await
            .unwrap()
            .call(ews("EASDEV1"))
            .await
            .unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(
            second.status(),
            StatusCode::OK,
            "ids match without regard to case"
        );
        assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(third.headers()[RETRY_AFTER], "1");
        assert_eq!(third.headers()["x-seg-fault"], "device-limit");
        let body = third.into_body().collect().await.unwrap().to_bytes();
        assert!(
            std::str::from_utf8(&body)
                .unwrap()
                .contains("ErrorServerBusy"),
            "{body:?}"
        );
        assert_eq!(
            calls.load(Ordering::Relaxed),
            2,
            "the refused one never reached Exchange"
        );
        assert_eq!(layer.refused(), 1);
        assert_eq!(layer.in_flight("EASDEV1"), 2);

        // Another device is not affected by this one's cap.
        let other = service
            .ready()
            .await
            .unwrap()
            .call(ews("EASDEV2"))
            .await
            .unwrap();
        assert_eq!(other.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_slot_is_held_until_the_response_body_is_dropped_not_when_headers_arrive() {
        let layer = DeviceLimitLayer::new(1);
        let mut service = limited(&layer);
        let held = service
            .ready()
            .await
            .unwrap()
            .call(activesync("PHONE1"))
            .await
            .unwrap();
        assert_eq!(layer.in_flight("PHONE1"), 1);
        // The same device in ActiveSync's base64-encoded query form: a Ping from PHONE1.
        let base64 = Request::post("/Microsoft-Server-ActiveSync?jRIJBAZQSE9ORTEABmlQaG9uZQ==")
            .body(Full::default())
            .unwrap();
        for request in [activesync("PHONE1"), base64] {
            let refused = service.ready().await.unwrap().call(request).await.unwrap();
            assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        // Read to the end, the body is dropped and the slot given back.
        let _ = held.into_body().collect().await.unwrap();
        assert_eq!(layer.in_flight("PHONE1"), 0);
        let again = service
            .ready()
            .await
            .unwrap()
            .call(activesync("PHONE1"))
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::OK);
        drop(again);
        assert_eq!(
            layer.in_flight("PHONE1"),
            0,
            "no entry kept for an idle device"
        );
    }

    #[tokio::test]
    async fn an_inner_error_gives_the_slot_back() {
        let layer = DeviceLimitLayer::new(1);
        let mut service = layer.layer(service_fn(|_request: Request<Full<Bytes>>| async {
            Err::<Answer, _>("exchange unreachable")
        }));
        for _ in 0..3 {
            let result = service.ready().await.unwrap().call(ews("EASDEV1")).await;
            assert!(result.is_err(), "each call reaches the inner service");
        }
        assert_eq!(layer.in_flight("EASDEV1"), 0);
    }

    #[tokio::test]
    async fn requests_without_a_device_and_an_unlimited_layer_are_never_refused() {
        let layer = DeviceLimitLayer::new(1);
        let mut service = limited(&layer);
        let anonymous = || {
            Request::post("/EWS/Exchange.asmx")
                .body(Full::default())
                .unwrap()
        };
        let a = service
            .ready()
            .await
            .unwrap()
            .call(anonymous())
            .await
            .unwrap();
        let b = service
            .ready()
            .await
            .unwrap()
            .call(anonymous())
            .await
            .unwrap();
        assert_eq!((a.status(), b.status()), (StatusCode::OK, StatusCode::OK));

        let unlimited = DeviceLimitLayer::unlimited();
        let mut service = limited(&unlimited);
        let mut held = Vec::new();
        for _ in 0..50 {
            let response = service
                .ready()
                .await
                .unwrap()
                .call(ews("EASDEV1"))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            held.push(response);
        }
        assert_eq!(unlimited.refused(), 0);
    }

    #[tokio::test]
    async fn a_custom_header_names_the_ews_device() {
        let layer =
            DeviceLimitLayer::new(1).with_device_header(HeaderName::from_static("x-eas-id"));
        let mut service = limited(&layer);
        let request = || {
            Request::post("/EWS/Exchange.asmx")
                .header("x-eas-id", "EASDEV9")
                .body(Full::default())
                .unwrap()
        };
        let _held = service
            .ready()
            .await
            .unwrap()
            .call(request())
            .await
            .unwrap();
        let refused = service
            .ready()
            .await
            .unwrap()
            .call(request())
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
