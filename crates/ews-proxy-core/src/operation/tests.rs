use super::*;
use crate::fault::SEG_FAULT_HEADER;
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use tower::{ServiceBuilder, ServiceExt, service_fn};

const SOAP_11: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const SOAP_12: &str = "http://www.w3.org/2003/05/soap-envelope";
const MESSAGES: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";

/// A SOAP 1.1 request for `operation`, with `header` inside `soap:Header`.
fn request_xml(header: &str, operation: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="{SOAP_11}" xmlns:m="{MESSAGES}"
    xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">
  <soap:Header><t:RequestServerVersion Version="Exchange2016"/>{header}</soap:Header>
  <soap:Body><m:{operation}><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape></m:{operation}></soap:Body>
</soap:Envelope>"#
    )
}

/// A body of given frames, then optional trailers, with an exact size hint; `Err` frames fail.
struct Frames {
    frames: VecDeque<Result<Frame<Bytes>, &'static str>>,
}

impl Frames {
    fn new(chunks: impl IntoIterator<Item = Bytes>) -> Self {
        Frames {
            frames: chunks.into_iter().map(|c| Ok(Frame::data(c))).collect(),
        }
    }

    /// `bytes` in frames of `size` bytes.
    fn chunked(bytes: &[u8], size: usize) -> Self {
        Self::new(bytes.chunks(size).map(Bytes::copy_from_slice))
    }

    fn with_trailers(mut self, trailers: HeaderMap) -> Self {
        self.frames.push_back(Ok(Frame::trailers(trailers)));
        self
    }

    fn with_error(mut self, error: &'static str) -> Self {
        self.frames.push_back(Err(error));
        self
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(
            self.frames
                .pop_front()
                .map(|frame| frame.map_err(BoxError::from)),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        let len: usize = self
            .frames
            .iter()
            .flatten()
            .filter_map(Frame::data_ref)
            .map(Bytes::len)
            .sum();
        SizeHint::with_exact(len as u64)
    }
}

/// What the inner service saw of a request.
#[derive(Debug, Default)]
struct Seen {
    operation: Option<EwsOperation>,
    body: Bytes,
    trailers: Option<HeaderMap>,
    size_hint: (u64, Option<u64>),
    calls: usize,
}

/// Sends `request` through `layer` to an inner service that records what it saw and answers
/// `200 OK`.
async fn send<B>(layer: EwsOperationLayer, request: Request<B>) -> (Response<Full<Bytes>>, Seen)
where
    B: Body<Error = BoxError> + Unpin + Send + 'static,
{
    let seen = Arc::new(Mutex::new(Seen::default()));
    let recorder = seen.clone();
    let service = ServiceBuilder::new().layer(layer).service(service_fn(
        move |request: Request<SniffedBody<B>>| {
            let recorder = recorder.clone();
            async move {
                let operation = request.extensions().get::<EwsOperation>().cloned();
                let hint = request.body().size_hint();
                let collected = request.into_body().collect().await?;
                let mut seen = recorder.lock().unwrap();
                seen.operation = operation;
                seen.size_hint = (hint.lower(), hint.upper());
                seen.trailers = collected.trailers().cloned();
                seen.body = collected.to_bytes();
                seen.calls += 1;
                Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        },
    ));
    let response = service.oneshot(request).await.unwrap();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    (response, seen)
}

fn post<B>(body: B) -> Request<B> {
    Request::builder()
        .method(Method::POST)
        .uri("/EWS/Exchange.asmx")
        .body(body)
        .unwrap()
}

/// A response carrying `value` in its extensions, for a test to read back.
fn answer<T: Clone + Send + Sync + 'static>(value: T) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::default());
    response.extensions_mut().insert(value);
    response
}

fn answered<T: Clone + Send + Sync + 'static>(response: Response<Full<Bytes>>) -> T {
    response.extensions().get::<T>().unwrap().clone()
}

async fn fault_text(response: Response<Full<Bytes>>) -> String {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn operation_is_put_in_extensions_and_body_passes_whole() {
    let xml = request_xml("", "GetItem");
    let (response, seen) = send(
        EwsOperationLayer::new(),
        post(Frames::chunked(xml.as_bytes(), 4096)),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(seen.operation, Some(EwsOperation::GetItem));
    assert_eq!(seen.body, xml.as_bytes());
}

#[tokio::test]
async fn large_header_before_body_is_skipped() {
    let impersonation = "<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>alice@example.com</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>";
    let header = impersonation.repeat(40_000 / impersonation.len());
    let xml = request_xml(&header, "FindItem");
    assert!(xml.len() > 40_000 && xml.len() < DEFAULT_PREFIX_LIMIT);
    let (_, seen) = send(
        EwsOperationLayer::requiring_soap(),
        post(Frames::chunked(xml.as_bytes(), 1000)),
    )
    .await;
    assert_eq!(seen.operation, Some(EwsOperation::FindItem));
    assert_eq!(seen.body, xml.as_bytes());
}

#[tokio::test]
async fn operation_split_across_one_byte_frames_is_found() {
    let xml = request_xml("", "SyncFolderItems");
    let (_, seen) = send(
        EwsOperationLayer::requiring_soap(),
        post(Frames::chunked(xml.as_bytes(), 1)),
    )
    .await;
    assert_eq!(seen.operation, Some(EwsOperation::SyncFolderItems));
    assert_eq!(seen.body, xml.as_bytes());
}

#[tokio::test]
async fn rest_of_body_streams_on_with_trailers_and_exact_size_hint() {
    let head =
        format!(r#"<s:Envelope xmlns:s="{SOAP_11}"><s:Body><m:CreateItem xmlns:m="{MESSAGES}">"#);
    let rest = [
        "<m:Items>".repeat(1000),
        "</m:Items>".repeat(1000),
        "</m:CreateItem></s:Body></s:Envelope>".to_owned(),
    ];
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    let body = Frames::new(
        [head.as_str(), &rest[0], &rest[1], &rest[2]]
            .map(|part| Bytes::copy_from_slice(part.as_bytes())),
    )
    .with_trailers(trailers.clone());
    let total = (head.len() + rest.iter().map(String::len).sum::<usize>()) as u64;

    let (_, seen) = send(EwsOperationLayer::new(), post(body)).await;

    assert_eq!(seen.operation, Some(EwsOperation::CreateItem));
    assert_eq!(
        seen.body,
        [head.as_str(), &rest[0], &rest[1], &rest[2]]
            .concat()
            .as_bytes()
    );
    assert_eq!(seen.trailers, Some(trailers));
    assert_eq!(seen.size_hint, (total, Some(total)));
}

#[tokio::test]
async fn sniffed_body_replays_read_frames_then_the_rest() {
    let head = format!(r#"<s:Envelope xmlns:s="{SOAP_11}"><s:Bo"#);
    let parts = [
        head.as_str(),
        "dy><GetFolder/>",
        "</s:Body>",
        "</s:Envelope>",
    ];
    let service = SniffOperation::new(service_fn(
        |request: Request<SniffedBody<Frames>>| async move {
            let mut body = request.into_body();
            let mut frames = Vec::new();
            let mut hints = vec![body.size_hint().exact()];
            while let Some(frame) = body.frame().await {
                frames.push(frame?.into_data().unwrap());
                hints.push(body.size_hint().exact());
            }
            assert!(body.is_end_stream());
            Ok::<_, BoxError>(answer((frames, hints)))
        },
    ));
    let request = post(Frames::new(
        parts.map(|p| Bytes::copy_from_slice(p.as_bytes())),
    ));

    let (frames, hints): (Vec<Bytes>, Vec<Option<u64>>) =
        answered(service.oneshot(request).await.unwrap());

    assert_eq!(frames, parts.map(|p| Bytes::copy_from_slice(p.as_bytes())));
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let remaining =
        |n: usize| Some((total - parts[..n].iter().map(|p| p.len()).sum::<usize>()) as u64);
    assert_eq!(hints, (0..=4).map(remaining).collect::<Vec<_>>());
}

#[tokio::test]
async fn soap_12_envelope_is_read() {
    let xml = format!(
        r#"<env:Envelope xmlns:env="{SOAP_12}"><env:Header/><env:Body><GetStreamingEvents xmlns="{MESSAGES}"/></env:Body></env:Envelope>"#
    );
    let (_, seen) = send(
        EwsOperationLayer::requiring_soap(),
        post(Frames::chunked(xml.as_bytes(), 7)),
    )
    .await;
    assert_eq!(seen.operation, Some(EwsOperation::GetStreamingEvents));
}

#[tokio::test]
async fn operation_outside_the_known_list_is_found_by_name() {
    let xml = request_xml("", "GetAppManifests");
    let (_, seen) = send(
        EwsOperationLayer::new(),
        post(Frames::chunked(xml.as_bytes(), 64)),
    )
    .await;
    assert_eq!(
        seen.operation,
        Some(EwsOperation::Other(Arc::from("GetAppManifests")))
    );
    assert_eq!(seen.operation.unwrap().as_str(), "GetAppManifests");
}

#[tokio::test]
async fn limit_reached_passes_as_unknown_with_body_whole() {
    let xml = request_xml(&" ".repeat(2000), "GetItem");
    let layer = EwsOperationLayer::new().with_prefix_limit(1024);
    let (response, seen) = send(layer, post(Frames::chunked(xml.as_bytes(), 100))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(seen.operation, Some(EwsOperation::Unknown));
    assert_eq!(seen.body, xml.as_bytes());
}

#[tokio::test]
async fn limit_reached_is_refused_when_requiring_soap() {
    let xml = request_xml(&" ".repeat(2000), "GetItem");
    let layer = EwsOperationLayer::requiring_soap().with_prefix_limit(1024);
    let (response, seen) = send(layer, post(Frames::chunked(xml.as_bytes(), 100))).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.headers()[SEG_FAULT_HEADER], "not-soap");
    assert_eq!(seen.calls, 0);
    assert!(
        fault_text(response)
            .await
            .contains("not within the first 1024 bytes")
    );
}

#[tokio::test]
async fn non_xml_body_is_refused_without_calling_inner_when_requiring_soap() {
    let (response, seen) = send(
        EwsOperationLayer::requiring_soap(),
        post(Frames::chunked(br#"{"op":"GetItem"}"#, 5)),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.headers()[SEG_FAULT_HEADER], "not-soap");
    assert_eq!(
        response.headers()["content-type"],
        "text/xml; charset=utf-8"
    );
    assert_eq!(seen.calls, 0);
    assert!(
        fault_text(response)
            .await
            .contains(">ErrorSchemaValidation</e:ResponseCode>")
    );
}

#[tokio::test]
async fn non_xml_body_passes_as_unknown_by_default() {
    let json = br#"{"op":"GetItem"}"#;
    let (response, seen) = send(EwsOperationLayer::new(), post(Frames::chunked(json, 5))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(seen.operation, Some(EwsOperation::Unknown));
    assert_eq!(seen.body, &json[..]);
}

#[tokio::test]
async fn empty_soap_body_and_truncated_body_are_refused_when_requiring_soap() {
    let empty = format!(r#"<s:Envelope xmlns:s="{SOAP_11}"><s:Body></s:Body></s:Envelope>"#);
    let truncated = format!(r#"<s:Envelope xmlns:s="{SOAP_11}"><s:Body><m:Get"#);
    for xml in [empty, truncated, String::new()] {
        let (response, seen) = send(
            EwsOperationLayer::requiring_soap(),
            post(Frames::chunked(xml.as_bytes(), 10)),
        )
        .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{xml}");
        assert_eq!(seen.calls, 0, "{xml}");
    }
}

#[tokio::test]
async fn body_ending_in_trailers_before_the_operation_is_unknown() {
    let xml = format!(r#"<s:Envelope xmlns:s="{SOAP_11}"><s:Body>"#);
    let body = Frames::chunked(xml.as_bytes(), 8).with_trailers(HeaderMap::new());
    let (_, seen) = send(EwsOperationLayer::new(), post(body)).await;
    assert_eq!(seen.operation, Some(EwsOperation::Unknown));
    assert_eq!(seen.body, xml.as_bytes());
    assert_eq!(seen.trailers, Some(HeaderMap::new()));
}

#[tokio::test]
async fn body_error_while_sniffing_is_a_400_fault() {
    let head = format!(r#"<s:Envelope xmlns:s="{SOAP_11}"><s:Header>"#);
    let body = Frames::chunked(head.as_bytes(), 8).with_error("connection reset");
    let (response, seen) = send(EwsOperationLayer::new(), post(body)).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response.headers()[SEG_FAULT_HEADER],
        "request-body-unreadable"
    );
    assert_eq!(seen.calls, 0);
}

#[tokio::test]
async fn body_error_after_sniffing_reaches_the_inner_service() {
    let xml = request_xml("", "GetItem");
    let body = Frames::chunked(xml.as_bytes(), 4096).with_error("connection reset");
    let service = SniffOperation::new(service_fn(
        |request: Request<SniffedBody<Frames>>| async move {
            let result = request.into_body().collect().await;
            Ok::<_, Infallible>(answer(result.map(|_| ()).map_err(|e| e.to_string())))
        },
    ));
    let result: Result<(), String> = answered(service.oneshot(post(body)).await.unwrap());
    assert_eq!(result, Err("connection reset".to_owned()));
}

#[tokio::test]
async fn get_passes_untouched_and_unread() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let service =
        SniffOperation::requiring_soap(service_fn(move |request: Request<SniffedBody<Frames>>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                let operation = request.extensions().get::<EwsOperation>().cloned();
                let body = request.into_body().collect().await?.to_bytes();
                Ok::<_, BoxError>(answer((operation, body)))
            }
        }));
    let request = Request::builder()
        .method(Method::GET)
        .uri("/EWS/Services.wsdl")
        .body(Frames::new([Bytes::from_static(b"not soap at all")]))
        .unwrap();

    let (operation, body): (Option<EwsOperation>, Bytes) =
        answered(service.oneshot(request).await.unwrap());

    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(operation, None);
    assert_eq!(body, "not soap at all");
}

#[tokio::test]
async fn full_body_from_http_body_util_works() {
    let xml = request_xml("", "Subscribe");
    let service = ServiceBuilder::new()
        .layer(EwsOperationLayer::requiring_soap())
        .service_fn(|request: Request<SniffedBody<Full<Bytes>>>| async move {
            let operation = request.extensions().get::<EwsOperation>().cloned().unwrap();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(operation.to_string()))))
        });
    let response = service
        .oneshot(post(Full::new(Bytes::from(xml))))
        .await
        .unwrap();
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "Subscribe"
    );
}

#[test]
fn operation_equality_and_hash_are_by_name() {
    use std::collections::HashSet;
    let other = EwsOperation::Other(Arc::from("GetItem"));
    assert_eq!(other, EwsOperation::GetItem);
    assert_eq!(
        EwsOperation::from_local_name("GetItem"),
        EwsOperation::GetItem
    );
    assert_ne!(
        EwsOperation::Other(Arc::from("unknown")),
        EwsOperation::Unknown
    );
    let set: HashSet<_> = [other, EwsOperation::GetItem, EwsOperation::Unknown]
        .into_iter()
        .collect();
    assert_eq!(set.len(), 2);
    assert_eq!(
        EwsOperation::GetStreamingEvents.to_string(),
        "GetStreamingEvents"
    );
    assert_eq!(EwsOperation::Unknown.as_str(), "unknown");
}

/// Captures the values recorded into spans after their creation.
#[derive(Clone, Default)]
struct RecordedFields(Arc<Mutex<Vec<(String, String)>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RecordedFields {
    fn on_record(
        &self,
        _span: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Visitor<'a>(&'a mut Vec<(String, String)>);
        impl tracing::field::Visit for Visitor<'_> {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push((field.name().to_owned(), format!("{value:?}")));
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                self.0.push((field.name().to_owned(), value.to_owned()));
            }
        }
        values.record(&mut Visitor(&mut self.0.lock().unwrap()));
    }
}

#[tokio::test]
async fn operation_is_recorded_in_the_request_span() {
    use tracing::Instrument;
    use tracing_subscriber::layer::SubscriberExt;
    let recorded = RecordedFields::default();
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(recorded.clone()));
    let span = tracing::info_span!("request", ews.operation = tracing::field::Empty);

    let request = post(Full::new(Bytes::from(request_xml("", "GetItem"))).map_err(BoxError::from));
    send(EwsOperationLayer::new(), request)
        .instrument(span)
        .await;

    let fields = recorded.0.lock().unwrap().clone();
    assert_eq!(fields, [("ews.operation".to_owned(), "GetItem".to_owned())]);
}

#[tokio::test]
async fn quoted_closing_brackets_do_not_end_a_tag_whatever_the_frames() {
    // `>` and the other quote inside attribute values, in the header and on the `Envelope`:
    // the tag ends at the `>` outside quotes, however the body is cut into frames.
    let xml = format!(
        r#"<soap:Envelope xmlns:soap="{SOAP_11}" xmlns:m="{MESSAGES}" x='a">b' y="c'>d">
  <soap:Header><h:H xmlns:h="urn:h" v="<Body>" w='</soap:Header>'/></soap:Header>
  <soap:Body><m:GetItem/></soap:Body></soap:Envelope>"#
    );
    for size in 1..=9 {
        let (_, seen) = send(
            EwsOperationLayer::requiring_soap(),
            post(Frames::chunked(xml.as_bytes(), size)),
        )
        .await;
        assert_eq!(
            seen.operation,
            Some(EwsOperation::GetItem),
            "frames of {size}"
        );
        assert_eq!(seen.body, xml.as_bytes());
    }
}

/// A body that sends `head` and then nothing, forever (a client that stopped mid-body).
struct Stalled {
    head: Option<Bytes>,
}

impl Body for Stalled {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.head.take() {
            Some(head) => Poll::Ready(Some(Ok(Frame::data(head)))),
            None => Poll::Pending,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn body_slower_than_the_read_timeout_is_a_408_fault_without_calling_inner() {
    let head = format!(r#"<s:Envelope xmlns:s="{SOAP_11}"><s:Header>"#);
    let body = Stalled {
        head: Some(Bytes::from(head)),
    };
    let layer = EwsOperationLayer::new().with_read_timeout(std::time::Duration::from_secs(3));
    let started = tokio::time::Instant::now();
    let (response, seen) = send(layer, post(body)).await;
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(response.headers()[SEG_FAULT_HEADER], "request-body-timeout");
    assert_eq!(started.elapsed(), std::time::Duration::from_secs(3));
    assert_eq!(seen.calls, 0);
}

/// A service that counts its clones and may only be called once made ready (as a concurrency
/// limit's permit would require); a clone starts not ready.
struct ReadyOnce {
    clones: Arc<AtomicUsize>,
    ready: bool,
}

impl Clone for ReadyOnce {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, Ordering::SeqCst);
        ReadyOnce {
            clones: self.clones.clone(),
            ready: false,
        }
    }
}

impl<B> Service<Request<B>> for ReadyOnce {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        assert!(
            std::mem::take(&mut self.ready),
            "called without being made ready"
        );
        let operation = request.extensions().get::<EwsOperation>().cloned();
        std::future::ready(Ok(answer(operation)))
    }
}

/// A body with nothing on the first poll (it asks to be polled again), then `data`.
struct Later {
    polled: bool,
    data: Option<Bytes>,
}

impl Body for Later {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !std::mem::replace(&mut self.polled, true) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(self.data.take().map(|data| Ok(Frame::data(data))))
    }
}

#[tokio::test]
async fn a_body_that_came_with_its_headers_is_read_in_call_without_cloning_the_service() {
    let clones = Arc::new(AtomicUsize::new(0));
    let mut service = SniffOperation::new(ReadyOnce {
        clones: clones.clone(),
        ready: false,
    });
    let xml = request_xml("", "GetItem");

    let future = ServiceExt::<Request<Frames>>::ready(&mut service)
        .await
        .unwrap()
        .call(post(Frames::chunked(xml.as_bytes(), 100)));

    assert_eq!(clones.load(Ordering::SeqCst), 0);
    let operation: Option<EwsOperation> = answered(future.await.unwrap());
    assert_eq!(operation, Some(EwsOperation::GetItem));
}

#[tokio::test]
async fn a_body_still_on_its_way_is_read_by_the_future_which_calls_the_ready_service() {
    let clones = Arc::new(AtomicUsize::new(0));
    let mut service = SniffOperation::new(ReadyOnce {
        clones: clones.clone(),
        ready: false,
    });
    let xml = request_xml("", "FindItem");
    let body = Later {
        polled: false,
        data: Some(Bytes::from(xml)),
    };

    let future = ServiceExt::<Request<Later>>::ready(&mut service)
        .await
        .unwrap()
        .call(post(body));

    // The service made ready went into the future; a clone stayed for the next request.
    assert_eq!(clones.load(Ordering::SeqCst), 1);
    let operation: Option<EwsOperation> = answered(future.await.unwrap());
    assert_eq!(operation, Some(EwsOperation::FindItem));
    // The clone left behind is made ready before its own call, like any other.
    let next = ServiceExt::<Request<Frames>>::ready(&mut service)
        .await
        .unwrap()
        .call(post(Frames::chunked(
            request_xml("", "GetItem").as_bytes(),
            64,
        )));
    let operation: Option<EwsOperation> = answered(next.await.unwrap());
    assert_eq!(operation, Some(EwsOperation::GetItem));
}
