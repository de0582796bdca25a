//! Writes the generated seed inputs of `fuzz/corpus/` (the hand-written and captured ones are
//! checked in as they are): EWS requests as mock-ens builds them, Kerberos replies encoded by
//! rasn, SPNEGO tokens and a keytab written by kcd-client, client certificates issued by the
//! testbed's PKI.
//!
//! With `--kdc`, also the replies of the testbed's real MIT KDC, captured by a TCP relay while
//! MIT's `kinit` and `kvno` ask it for a TGT (a KRB-ERROR asking for pre-authentication, then
//! an AS-REP), a service ticket (a TGS-REP) and a ticket for a service it does not know (a
//! KRB-ERROR).
//!
//! ```text
//! cargo run -p fuzz-targets --example write_seeds [-- --kdc]
//! ```

use base64::Engine as _;
use ens_subscription::soap::{
    EventType, FolderId, GetEvents, GetItem, GetStreamingEvents, ItemId, Subscribe, Unsubscribe,
};
use kcd_client::crypto::{EncType, Key};
use kcd_client::keytab::{Keytab, KeytabEntry, Principal};
use rasn::types::Integer;
use rasn_kerberos::{
    AsRep, EncryptedData, KdcRep, KerberosString, KerberosTime, KrbError, PaData, PrincipalName,
    TgsRep, Ticket,
};
use seg_testbed::pki::{ClientCertSpec, TestPki};
use std::path::{Path, PathBuf};

fn corpus(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    dir
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    std::fs::write(corpus(target).join(name), bytes).expect("seed written");
}

fn kstring(s: &str) -> KerberosString {
    KerberosString::from_bytes(s.as_bytes()).expect("ASCII")
}

fn name(name_type: i32, parts: &[&str]) -> PrincipalName {
    PrincipalName {
        r#type: name_type,
        string: parts.iter().map(|p| kstring(p)).collect(),
    }
}

fn time(text: &str) -> KerberosTime {
    let mut der = vec![0x18, text.len() as u8];
    der.extend_from_slice(text.as_bytes());
    rasn::der::decode(&der).expect("GeneralizedTime")
}

fn kdc_rep(msg_type: i64, sname: PrincipalName) -> KdcRep {
    KdcRep {
        pvno: Integer::from(5),
        msg_type: Integer::from(msg_type),
        padata: Some(vec![PaData {
            r#type: 19,
            value: vec![0x30, 0x03, 0xa0, 0x01, 0x12].into(),
        }]),
        crealm: kstring("TEST.LOCAL"),
        cname: name(1, &["HTTP", "seg.test.local"]),
        ticket: Ticket {
            tkt_vno: Integer::from(5),
            realm: kstring("TEST.LOCAL"),
            sname,
            enc_part: EncryptedData {
                etype: 18,
                kvno: Some(2),
                cipher: vec![0xa5; 96].into(),
            },
        },
        enc_part: EncryptedData {
            etype: 18,
            kvno: Some(1),
            cipher: vec![0x5a; 64].into(),
        },
    }
}

fn kerberos() {
    let as_rep = AsRep(kdc_rep(11, name(2, &["krbtgt", "TEST.LOCAL"])));
    write(
        "kdc_reply",
        "as-rep.der",
        &rasn::der::encode(&as_rep).unwrap(),
    );
    let tgs_rep = TgsRep(kdc_rep(13, name(2, &["HTTP", "exchange.test.local"])));
    write(
        "kdc_reply",
        "tgs-rep.der",
        &rasn::der::encode(&tgs_rep).unwrap(),
    );
    let error = KrbError {
        pvno: Integer::from(5),
        msg_type: Integer::from(30),
        ctime: None,
        cusec: None,
        stime: time("20260101000000Z"),
        susec: Integer::from(0),
        error_code: 25,
        crealm: Some(kstring("TEST.LOCAL")),
        cname: Some(name(1, &["HTTP", "seg.test.local"])),
        realm: kstring("TEST.LOCAL"),
        sname: name(2, &["krbtgt", "TEST.LOCAL"]),
        e_text: Some(kstring("Additional pre-authentication required")),
        e_data: Some(vec![0x30, 0x00].into()),
    };
    write(
        "kdc_reply",
        "krb-error-preauth.der",
        &rasn::der::encode(&error).unwrap(),
    );

    let mut keytab = Keytab::new();
    for (i, etype) in [EncType::Aes256CtsHmacSha196, EncType::Aes128CtsHmacSha196]
        .into_iter()
        .enumerate()
    {
        keytab.push(KeytabEntry {
            principal: Principal::parse("HTTP/seg.test.local@TEST.LOCAL", None).unwrap(),
            timestamp: 1_767_225_600,
            kvno: 3,
            key: Key::new(etype, &vec![0x11 * (i as u8 + 1); etype.key_len()]).unwrap(),
        });
    }
    write("keytab", "written.keytab", &keytab.to_bytes());

    let init = kcd_client::spnego::neg_token_init(b"\x01\x00fake-ap-req");
    write("spnego", "neg-token-init.der", &init);
    // NegTokenResp { negState accept-completed, supportedMech krb5, responseToken 6f00 }.
    let resp = kcd_client::spnego::NegotiationToken::Resp(
        rasn::der::decode(&[
            0x30, 0x18, 0xa0, 0x03, 0x0a, 0x01, 0x00, 0xa1, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48,
            0x86, 0xf7, 0x12, 0x01, 0x02, 0x02, 0xa2, 0x04, 0x04, 0x02, 0x6f, 0x00,
        ])
        .unwrap(),
    );
    write(
        "spnego",
        "neg-token-resp.der",
        &rasn::der::encode(&resp).unwrap(),
    );

    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    write(
        "authorization",
        "negotiate",
        format!("Negotiate {}", b64(&init)).as_bytes(),
    );
    write(
        "authorization",
        "basic",
        format!("Basic {}", b64(b"alice@test.local:secret")).as_bytes(),
    );
    write(
        "authorization",
        "ntlm-in-negotiate",
        format!("Negotiate {}", b64(b"NTLMSSP\0\x01\0\0\0\x07\x82\x08\xa2")).as_bytes(),
    );
    write(
        "authorization",
        "ntlm",
        format!("NTLM {}", b64(b"NTLMSSP\0\x01\0\0\0\x07\x82\x08\xa2")).as_bytes(),
    );
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(br#"{"upn":"alice@test.local","aud":"https://outlook.office365.com"}"#);
    write(
        "authorization",
        "bearer",
        format!("Bearer eyJhbGciOiJSUzI1NiJ9.{claims}.c2ln").as_bytes(),
    );
}

fn certificates() {
    let pki = TestPki::in_memory(&[]).unwrap();
    let der = |pem: &str| {
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    };
    let upn = pki
        .issue_client_cert(&ClientCertSpec::upn("alice@test.local"))
        .unwrap();
    write("client_cert_upn", "upn.der", &der(&upn.cert_pem));
    let email = pki
        .issue_client_cert(&ClientCertSpec {
            common_name: "Bob".into(),
            email: Some("bob@test.local".into()),
            ..ClientCertSpec::default()
        })
        .unwrap();
    write("client_cert_upn", "email-only.der", &der(&email.cert_pem));
    let raw = pki
        .issue_client_cert(&ClientCertSpec {
            common_name: "Mallory".into(),
            raw_upn_value: Some(vec![0xa0, 0x05, 0x0c, 0x03, b'a', 0x00, b'b']),
            ..ClientCertSpec::default()
        })
        .unwrap();
    write("client_cert_upn", "raw-upn-nul.der", &der(&raw.cert_pem));
}

fn ews_requests() {
    let requests = [
        (
            "subscribe-push.xml",
            Subscribe::push("https://ens.test.local/callback/d1", 15)
                .folders([FolderId::inbox()])
                .event_types([EventType::NewMail])
                .to_xml(),
        ),
        ("subscribe-streaming.xml", Subscribe::streaming().to_xml()),
        (
            "get-events.xml",
            GetEvents::new("sub-1", "AAAAAA==").to_xml(),
        ),
        (
            "get-streaming-events.xml",
            GetStreamingEvents::new("sub-1", 30).to_xml(),
        ),
        ("unsubscribe.xml", Unsubscribe::new("sub-1").to_xml()),
        (
            "get-item.xml",
            GetItem::new(ItemId::new("AAMkAD=")).to_xml(),
        ),
    ];
    for (file, xml) in requests {
        write("ews_operation", file, xml.as_bytes());
    }
}

/// Relays Kerberos over TCP (a 4-byte length, then the message) from `listener` to `kdc`, one
/// exchange per connection as MIT clients make them, and keeps every reply.
fn relay(
    listener: std::net::TcpListener,
    kdc: std::net::SocketAddr,
    replies: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
) {
    use std::io::{Read as _, Write as _};
    let read_message = |stream: &mut std::net::TcpStream| -> std::io::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len)?;
        let mut message = vec![0u8; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut message)?;
        Ok(message)
    };
    for client in listener.incoming() {
        let Ok(mut client) = client else { continue };
        let Ok(request) = read_message(&mut client) else {
            continue;
        };
        let mut upstream = std::net::TcpStream::connect(kdc).expect("KDC reachable");
        upstream
            .write_all(&(request.len() as u32).to_be_bytes())
            .unwrap();
        upstream.write_all(&request).unwrap();
        let reply = read_message(&mut upstream).expect("KDC reply");
        client
            .write_all(&(reply.len() as u32).to_be_bytes())
            .unwrap();
        client.write_all(&reply).unwrap();
        replies.lock().unwrap().push(reply);
    }
}

/// Replies of the testbed's MIT KDC to MIT's own tools, as they came over the wire.
fn real_kdc() {
    use seg_testbed::kdc::{EXCHANGE_SERVICE, GATEWAY_SERVICE, Kdc, KdcConfig};
    let kdc = Kdc::start(KdcConfig::temporary()).expect("the testbed KDC starts");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let replies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = replies.clone();
    let addr = kdc.addr();
    std::thread::spawn(move || relay(listener, addr, kept));
    let conf = std::fs::read_to_string(kdc.krb5_conf()).unwrap().replace(
        &format!("127.0.0.1:{}", kdc.port()),
        &format!("127.0.0.1:{port}"),
    );
    let conf_path = kdc.dir().join("relay-krb5.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let run = |program: &str, args: &[&str]| {
        let status = std::process::Command::new(program)
            .args(args)
            .env("KRB5_CONFIG", &conf_path)
            .env(
                "KRB5CCNAME",
                format!("FILE:{}", kdc.dir().join("relay-ccache").display()),
            )
            .status()
            .expect("MIT client tools");
        println!("{program} {args:?}: {status}");
    };
    let keytab = kdc.keytab(GATEWAY_SERVICE).unwrap().display().to_string();
    run("kinit", &["-k", "-t", &keytab, GATEWAY_SERVICE]);
    run("kvno", &[EXCHANGE_SERVICE]);
    run("kvno", &["HTTP/unknown.test.local"]);
    let replies = replies.lock().unwrap().clone();
    for (i, reply) in replies.iter().enumerate() {
        let kind = match reply.first() {
            Some(0x6b) => "as-rep",
            Some(0x6d) => "tgs-rep",
            Some(0x7e) => "krb-error",
            _ => "unknown",
        };
        write("kdc_reply", &format!("mit-{i}-{kind}.der"), reply);
    }
    write("keytab", "mit-seg.keytab", &std::fs::read(&keytab).unwrap());
    kdc.stop();
}

fn main() {
    if std::env::args().any(|arg| arg == "--kdc") {
        real_kdc();
    }
    kerberos();
    certificates();
    ews_requests();
    println!("seeds written under fuzz/corpus/");
}
