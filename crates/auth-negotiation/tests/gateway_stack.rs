//! Both layers of this crate that `seg-proxy` adds for certificate users fit its EWS stack: the
//! request and response types line up and the whole is a `BoxCloneSyncService`, the gateway's
//! service type, with the layers optional as configuration makes them. A build of this test is
//! the proof; running it only constructs the stack.

use std::convert::Infallible;
use std::time::Duration;

use auth_negotiation::challenges::StripChallengesLayer;
use auth_negotiation::client_cert::ClientCertLayer;
use auth_negotiation::identity::IdentifyLayer;
use auth_negotiation::kcd::KcdAuthLayer;
use auth_negotiation::ntlm::RefuseNtlmLayer;
use ews_proxy_core::body::ResponseBody;
use ews_proxy_core::body_limit::RequestBodyLimitLayer;
use ews_proxy_core::forwarded::ForwardedHeadersLayer;
use ews_proxy_core::hop_by_hop::StripHopByHopLayer;
use ews_proxy_core::operation::EwsOperationLayer;
use ews_proxy_core::proxy::{ReverseProxy, Upstream};
use ews_proxy_core::tls::UpstreamTrust;
use ews_proxy_core::upstream::{PoolSettings, UpstreamClient};
use http::{Request, Response};
use hyper::body::Incoming;
use kcd_client::{Credentials, KcdClient, KcdConfig, RealmConfig};
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

#[tokio::test]
async fn strip_challenges_and_kcd_auth_fit_the_gateway_s_ews_stack() {
    // Talks to no KDC until a request needs a ticket.
    let kcd = KcdClient::new(KcdConfig::new(
        vec![RealmConfig::new("test.local", ["127.0.0.1:88"])],
        "HTTP/seg.test.local",
        Credentials::Password("unused".into()),
    ))
    .unwrap();
    let client = UpstreamClient::new(&UpstreamTrust::default(), &PoolSettings::default()).unwrap();
    let exchange = Upstream::new(
        "https://exchange.test.local".parse().unwrap(),
        Duration::from_secs(60),
    )
    .unwrap();

    let ews = ServiceBuilder::new()
        .layer(StripHopByHopLayer::new())
        .layer(ForwardedHeadersLayer::new())
        .layer(RequestBodyLimitLayer::new(16 << 20))
        .layer(EwsOperationLayer::new())
        .layer(RefuseNtlmLayer::new())
        .option_layer(Some(ClientCertLayer::new()))
        // After the certificate layer: it decides by the identity that one leaves.
        .option_layer(Some(StripChallengesLayer::new()))
        .option_layer(Some(IdentifyLayer::new()))
        // Last before the proxy, as seg-proxy would add it (after compliance).
        .option_layer(Some(KcdAuthLayer::for_client(
            kcd,
            "HTTP/exchange.test.local",
        )))
        .service(ReverseProxy::new(client, exchange));

    let _gateway: BoxCloneSyncService<Request<Incoming>, Response<ResponseBody>, Infallible> =
        BoxCloneSyncService::new(ews);
}
