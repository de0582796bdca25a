//! kcd-client against Samba's Active Directory domain controller (`seg_testbed::samba`), the
//! second, AD-like KDC: what only Active Directory does. The gateway (account `svc-seg`,
//! protocol transition, `msDS-AllowedToDelegateTo: HTTP/exchange.test.local`) asks for alice by
//! her UPN `alice@corp.example`, an enterprise name whose suffix is not the realm, which MIT's
//! KDC does not resolve. The proof that a ticket is alice's is independent of the client: it is
//! decrypted with Exchange's keytab, exported by `samba-tool` (the RC4 key, as Active Directory
//! encrypts tickets to accounts that do not list their encryption types), its PAC is read, and
//! the system GSSAPI accepts the Negotiate token.
//!
//! The DC needs root and Debian's `samba` (`scripts/install-deps.sh`); without them these tests
//! fail, they do not skip. The tests of one process share one DC (`cargo test`: one set-up of
//! about 7 s); `cargo nextest` runs each test in its own process, so each sets up its own.

mod support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use kcd_client::crypto::EncType;
use kcd_client::keytab::{Keytab, Principal};
use kcd_client::{Credentials, KcdClient, KcdConfig, KcdError, RealmConfig, UserName};
use rasn_kerberos::{AuthorizationData, EncTicketPart, Ticket};
use seg_testbed::exchange::{NegotiateConfig, User};
use seg_testbed::harness::{TEST_PASSWORD, TestExchange, body_text, xml_text};
use seg_testbed::samba::{
    EXCHANGE_SERVICE, GATEWAY_ACCOUNT, GATEWAY_PASSWORD, OTHER_SERVICE, RunningSambaDc,
    SambaConfig, SambaDc,
};
use support::{ap_req_of, names};

/// The name types of a plain principal and an enterprise name (RFC 4120 6.2, RFC 6806).
const NT_PRINCIPAL: i32 = 1;
const NT_ENTERPRISE: i32 = 10;
/// RC4-HMAC (RFC 4757).
const RC4_HMAC: i32 = 23;
/// AD-IF-RELEVANT (RFC 4120 5.2.6.1).
const AD_IF_RELEVANT: i32 = 1;
/// AD-WIN2K-PAC (MS-PAC 2.4 / MS-KILE 3.1.5.5).
const AD_WIN2K_PAC: i32 = 128;
/// PAC_CLIENT_INFO and UPN_DNS_INFO buffers of a PAC (MS-PAC 2.4).
const PAC_CLIENT_INFO: u32 = 10;
const PAC_UPN_DNS_INFO: u32 = 12;

/// alice's enterprise name as MIT's GSSAPI displays the initiator of a ticket naming it.
const ALICE_AS_GSSAPI_SHOWS_HER: &str = r"alice\@corp.example@AD.TEST.LOCAL";

const GET_INBOX: &str = r#"<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>"#;

/// The DC the tests of this binary share while any of them runs.
async fn shared_dc() -> Arc<RunningSambaDc> {
    SambaDc::shared(SambaConfig::temporary)
        .await
        .expect("the Samba DC starts (it needs root and scripts/install-deps.sh)")
}

/// The gateway logging in as its account `svc-seg@AD.TEST.LOCAL` with `credentials`.
fn gateway(dc: &RunningSambaDc, credentials: Credentials) -> KcdClient {
    let mut config = KcdConfig::new(
        vec![RealmConfig::new(dc.realm(), [dc.addr().to_string()])],
        format!("{GATEWAY_ACCOUNT}@{}", dc.realm()),
        credentials,
    );
    config.attempt_timeout = Duration::from_secs(5);
    KcdClient::new(config).unwrap()
}

/// The gateway with the keytab `samba-tool domain exportkeytab` wrote for its account.
fn gateway_with_keytab(dc: &RunningSambaDc) -> KcdClient {
    let keytab = dc.keytab(GATEWAY_ACCOUNT).unwrap().to_path_buf();
    gateway(dc, Credentials::KeytabFile(keytab))
}

/// alice, by her UPN.
fn alice() -> UserName {
    UserName::enterprise("alice@corp.example").unwrap()
}

/// Decrypts `ticket` with Exchange's key from its keytab, as Exchange would.
fn open_ticket(dc: &RunningSambaDc, ticket: &Ticket) -> EncTicketPart {
    let keytab = Keytab::read(dc.keytab(EXCHANGE_SERVICE).unwrap()).unwrap();
    let principal = Principal::parse(EXCHANGE_SERVICE, Some(dc.realm())).unwrap();
    let etype = EncType::from_i32(ticket.enc_part.etype).unwrap();
    let entry = keytab
        .key_for(&principal, etype)
        .expect("Exchange's keytab holds a key of the ticket's type");
    let plain = entry
        .key
        .decrypt(2, &ticket.enc_part.cipher)
        .expect("the ticket decrypts with Exchange's key");
    rasn::der::decode_with_remainder::<EncTicketPart>(&plain)
        .unwrap()
        .0
}

/// The PAC in a ticket's authorization data: the AD-WIN2K-PAC element inside AD-IF-RELEVANT.
fn pac_of(ticket: &EncTicketPart) -> Option<Vec<u8>> {
    ticket
        .authorization_data
        .iter()
        .flatten()
        .filter(|element| element.r#type == AD_IF_RELEVANT)
        .filter_map(|element| rasn::der::decode::<AuthorizationData>(&element.data).ok())
        .flatten()
        .find(|element| element.r#type == AD_WIN2K_PAC)
        .map(|element| element.data.to_vec())
}

/// The buffer of type `kind` in a PAC (MS-PAC 2.3, 2.4: a count, a version, then entries of
/// type, size and offset).
fn pac_buffer(pac: &[u8], kind: u32) -> Option<&[u8]> {
    let u32_at = |at: usize| Some(u32::from_le_bytes(pac.get(at..at + 4)?.try_into().ok()?));
    let count = u32_at(0)? as usize;
    (0..count).find_map(|i| {
        let entry = 8 + 16 * i;
        let size = u32_at(entry + 4)? as usize;
        let offset = u64::from_le_bytes(pac.get(entry + 8..entry + 16)?.try_into().ok()?);
        let offset = usize::try_from(offset).ok()?;
        (u32_at(entry)? == kind).then(|| pac.get(offset..offset + size))?
    })
}

/// The UTF-16LE text of `len` bytes at `start` of `bytes`.
fn utf16(bytes: &[u8], start: usize, len: usize) -> String {
    let units: Vec<u16> = bytes[start..start + len]
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .collect();
    String::from_utf16(&units).unwrap()
}

/// The client name of a PAC_CLIENT_INFO buffer (MS-PAC 2.7: a FILETIME, a length, the name).
fn pac_client_name(info: &[u8]) -> String {
    let len = u16::from_le_bytes([info[8], info[9]]) as usize;
    utf16(info, 10, len)
}

/// What an UPN_DNS_INFO buffer says.
#[derive(Debug, PartialEq, Eq)]
struct UpnDnsInfo {
    upn: String,
    dns_domain: String,
    /// The account name (`sAMAccountName`), present with the S flag.
    sam_name: Option<String>,
}

/// Reads an UPN_DNS_INFO buffer (MS-PAC 2.10: lengths and offsets of the UPN and the DNS
/// domain, flags, and with flag S (2) those of the account name and SID).
fn pac_upn_dns_info(info: &[u8]) -> UpnDnsInfo {
    let u16_at = |at: usize| u16::from_le_bytes([info[at], info[at + 1]]) as usize;
    let flags = u32::from_le_bytes(info[8..12].try_into().unwrap());
    UpnDnsInfo {
        upn: utf16(info, u16_at(2), u16_at(0)),
        dns_domain: utf16(info, u16_at(6), u16_at(4)),
        sam_name: (flags & 2 != 0).then(|| utf16(info, u16_at(14), u16_at(12))),
    }
}

#[tokio::test]
async fn mits_own_tools_get_a_ticket_to_exchange_for_alices_upn() {
    let dc = shared_dc().await;
    let ccache = format!("FILE:{}", dc.dir().join("mit-tools.cc").display());
    let run = |command: &mut std::process::Command| {
        let output = command.env("KRB5CCNAME", &ccache).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    };

    let kinit = run(dc
        .command("kinit")
        .args(["-k", "-t"])
        .arg(dc.keytab(GATEWAY_ACCOUNT).unwrap())
        .arg(GATEWAY_ACCOUNT));
    let kvno = run(dc
        .command("kvno")
        .args(["-U", "alice@corp.example", "-P", EXCHANGE_SERVICE]));
    let refused = run(dc
        .command("kvno")
        .args(["-U", "alice@corp.example", "-P", OTHER_SERVICE]));

    assert!(kinit.0, "{}", kinit.1);
    assert!(kvno.0, "{}", kvno.1);
    assert!(
        kvno.1
            .contains("HTTP/exchange.test.local@AD.TEST.LOCAL: kvno ="),
        "{}",
        kvno.1
    );
    assert!(!refused.0, "{}", refused.1);
    assert!(
        refused.1.contains("constrained delegation failed"),
        "{}",
        refused.1
    );
}

#[tokio::test]
async fn keytab_login_then_s4u_for_alices_upn_gives_exchange_an_rc4_ticket_with_her_pac() {
    let dc = shared_dc().await;
    let client = gateway_with_keytab(&dc);

    let ticket = client
        .service_ticket(&alice(), EXCHANGE_SERVICE)
        .await
        .unwrap();

    assert_eq!(ticket.service(), "HTTP/exchange.test.local@AD.TEST.LOCAL");
    let client_view = ticket.client();
    let ticket: Ticket = rasn::der::decode(&ticket.ticket_der()).unwrap();
    assert_eq!(names(&ticket.sname), ["HTTP", "exchange.test.local"]);
    assert_eq!(ticket.enc_part.etype, RC4_HMAC, "AD encrypts it with RC4");
    let opened = open_ticket(&dc, &ticket);
    // The ticket names the user as asked for (the enterprise name, in the realm), as the
    // client's own view says; the PAC names the account the KDC resolved it to.
    assert_eq!(client_view, "alice@corp.example@AD.TEST.LOCAL");
    assert_eq!(opened.cname.r#type, NT_ENTERPRISE);
    assert_eq!(names(&opened.cname), ["alice@corp.example"]);
    assert_eq!(opened.crealm.as_bytes(), b"AD.TEST.LOCAL");
    let pac = pac_of(&opened).expect("the ticket carries a PAC");
    let client_info = pac_buffer(&pac, PAC_CLIENT_INFO).expect("the PAC has PAC_CLIENT_INFO");
    assert_eq!(pac_client_name(client_info), "alice@corp.example");
    let upn_info = pac_buffer(&pac, PAC_UPN_DNS_INFO).expect("the PAC has UPN_DNS_INFO");
    assert_eq!(
        pac_upn_dns_info(upn_info),
        UpnDnsInfo {
            upn: "alice@corp.example".into(),
            dns_domain: "AD.TEST.LOCAL".into(),
            sam_name: Some("alice".into()),
        }
    );
}

#[tokio::test]
async fn alices_account_name_as_a_principal_gives_a_ticket_naming_the_account() {
    let dc = shared_dc().await;
    let client = gateway_with_keytab(&dc);
    let alice = UserName::principal("alice", dc.realm()).unwrap();

    let ticket = client
        .service_ticket(&alice, EXCHANGE_SERVICE)
        .await
        .unwrap();

    assert_eq!(ticket.client(), "alice@AD.TEST.LOCAL");
    let ticket: Ticket = rasn::der::decode(&ticket.ticket_der()).unwrap();
    let opened = open_ticket(&dc, &ticket);
    assert_eq!(opened.cname.r#type, NT_PRINCIPAL);
    assert_eq!(names(&opened.cname), ["alice"]);
    let pac = pac_of(&opened).expect("the ticket carries a PAC");
    let upn_info = pac_buffer(&pac, PAC_UPN_DNS_INFO).expect("the PAC has UPN_DNS_INFO");
    assert_eq!(pac_upn_dns_info(upn_info).upn, "alice@corp.example");
}

#[tokio::test]
async fn password_login_then_s4u_for_alices_upn_works_too() {
    let dc = shared_dc().await;
    let client = gateway(&dc, Credentials::Password(GATEWAY_PASSWORD.into()));

    let ticket = client
        .service_ticket(&alice(), EXCHANGE_SERVICE)
        .await
        .unwrap();

    let ticket: Ticket = rasn::der::decode(&ticket.ticket_der()).unwrap();
    let opened = open_ticket(&dc, &ticket);
    assert_eq!(names(&opened.cname), ["alice@corp.example"]);
    assert!(pac_of(&opened).is_some());
    assert_eq!(client.exchanges().logins, 1);
}

#[tokio::test]
async fn the_negotiate_token_for_alices_upn_is_accepted_by_gssapi_as_alice() {
    let dc = shared_dc().await;
    let negotiate = NegotiateConfig::new(dc.keytab(EXCHANGE_SERVICE).unwrap());
    // The test Exchange knows a Kerberos user by the initiator name GSSAPI displays, which for
    // a ticket naming an enterprise name is that name escaped, in the realm (real Exchange
    // reads the account from the PAC instead).
    let exchange = TestExchange::start(|config| {
        config.users = vec![User {
            upn: ALICE_AS_GSSAPI_SHOWS_HER.into(),
            password: TEST_PASSWORD.into(),
            mailbox: "alice@corp.example".into(),
        }];
        config.negotiate = Some(negotiate);
    })
    .await
    .unwrap();
    exchange
        .server
        .deliver("alice@corp.example", "For alice")
        .unwrap();
    let client = gateway_with_keytab(&dc);
    let token = client
        .negotiate_token(&alice(), EXCHANGE_SERVICE, None)
        .await
        .unwrap();

    let response = exchange
        .ews(&token.to_header_value(), &[], GET_INBOX)
        .await
        .unwrap();

    assert_eq!(response.status().as_u16(), 200);
    let reply = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    let body = body_text(response.into_body()).await.unwrap();
    assert_eq!(xml_text(&body, "TotalCount").as_deref(), Some("1"));
    let served_as = exchange
        .server
        .requests()
        .last()
        .unwrap()
        .authenticated_user
        .clone();
    assert_eq!(served_as.as_deref(), Some(ALICE_AS_GSSAPI_SHOWS_HER));
    assert_eq!(
        names(&ap_req_of(&token).ticket.sname),
        ["HTTP", "exchange.test.local"]
    );
    // GSSAPI's AP-REP, under the RC4 session key, proves Exchange read the ticket.
    let reply = base64::engine::general_purpose::STANDARD
        .decode(reply.strip_prefix("Negotiate ").unwrap())
        .unwrap();
    token.verify_mutual(&reply).unwrap();
}

#[tokio::test]
async fn delegating_to_a_service_not_in_msds_allowed_to_delegate_to_is_refused() {
    let dc = shared_dc().await;
    let client = gateway_with_keytab(&dc);

    let error = client
        .service_ticket(&alice(), OTHER_SERVICE)
        .await
        .unwrap_err();

    match error {
        KcdError::DelegationNotAllowed { target, .. } => {
            assert_eq!(target, "HTTP/other.test.local@AD.TEST.LOCAL");
        }
        other => panic!("expected DelegationNotAllowed, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unknown_upn_is_reported_as_an_unknown_user() {
    let dc = shared_dc().await;
    let client = gateway_with_keytab(&dc);
    let mallory = UserName::enterprise("mallory@corp.example").unwrap();

    let error = client
        .service_ticket(&mallory, EXCHANGE_SERVICE)
        .await
        .unwrap_err();

    match error {
        KcdError::UnknownUser { user } => assert_eq!(user, "mallory@corp.example"),
        other => panic!("expected UnknownUser, got {other:?}"),
    }
}
