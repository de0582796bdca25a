//! Embedding kcd-client: a tower stack (timeout, concurrency limit) around `KcdClient` that turns
//! a certificate's UPN into `Authorization: Negotiate …` for Exchange.
//!
//! Against the project's own KDC:
//! ```text
//! cargo run -p seg-testbed-cli -- kdc --dir /tmp/kdc &      # prints the KDC's port
//! cargo run --example kcd_negotiate -- /tmp/kdc/krb5.conf /tmp/kdc/seg.keytab alice
//! ```

use kcd_client::krb5_conf::Krb5Conf;
use kcd_client::{Credentials, KcdClient, KcdConfig, KcdRequest};
use std::time::Duration;
use tower::{ServiceBuilder, ServiceExt as _};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let (Some(krb5_conf), Some(keytab), Some(user)) = (args.next(), args.next(), args.next())
    else {
        eprintln!("usage: kcd_negotiate KRB5_CONF KEYTAB USER [SERVICE] [TARGET]");
        std::process::exit(2);
    };
    let service = args.next().unwrap_or_else(|| "HTTP/seg.test.local".into());
    let target = args
        .next()
        .unwrap_or_else(|| "HTTP/exchange.test.local".into());

    let conf = Krb5Conf::read(krb5_conf.as_ref())?;
    let client = KcdClient::new(KcdConfig::new(
        conf.realms,
        service,
        Credentials::KeytabFile(keytab.into()),
    ))?;
    let user = client.user_name(&user)?;
    // Ordinary tower layers: the KDC gets at most 64 exchanges at once, each bounded.
    let stack = ServiceBuilder::new()
        .concurrency_limit(64)
        .timeout(Duration::from_secs(5))
        .service(client.clone());
    let token = stack.oneshot(KcdRequest::new(user, target)).await?;
    println!("Authorization: {}", token.to_header_value());
    let exchanges = client.exchanges();
    eprintln!(
        "KDC exchanges: {} login(s), {} S4U2Self, {} S4U2Proxy",
        exchanges.logins, exchanges.s4u2self, exchanges.s4u2proxy
    );
    Ok(())
}
