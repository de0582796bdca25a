//! The console's routes: sign-in, the session check, the pages, the override form and the event
//! stream.

use crate::pages::{self, AuditFilter, DeviceRow, DevicesQuery, Overview};
use crate::search::{self, Search, decide, now_for};
use crate::session::Session;
use crate::{
    Console, ConsoleError, DEVICES_PER_PAGE, MAX_REASON_LEN, SESSION_COOKIE, SIGN_IN_COOKIE,
    SIGN_IN_FORM_TTL,
};
use audit_trail::entry::{Entry, Event as AuditEvent, Record};
use audit_trail::store::Query;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use compliance_policy::admin::{Operator, OverrideChange, OverrideTarget};
use compliance_policy::device::DeviceId;
use compliance_policy::policy::Override;
use futures_util::Stream;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue, StatusCode};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::broadcast;

/// The largest form a request may carry.
const MAX_FORM: usize = 16 * 1024;

/// The longest device id, user name or search a request may give.
const MAX_NAME_LEN: usize = 512;

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// The signed-in session of a request, put in its extensions by [`require_session`].
#[derive(Clone)]
struct SignedIn {
    id: Arc<str>,
    session: Session,
}

pub(crate) fn router(console: Console) -> Router {
    let open = Router::new()
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/assets/console.css", get(css))
        .route("/ui/assets/console.js", get(js));
    let closed = Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(overview))
        .route("/ui/devices", get(devices))
        .route("/ui/devices/{device_id}", get(device))
        .route("/ui/devices/{device_id}/override", post(set_override))
        .route("/ui/users/{user}", get(user))
        .route("/ui/users/{user}/override", post(set_user_override))
        .route("/ui/audit", get(audit))
        .route("/ui/config", get(configuration))
        .route("/ui/events", get(events))
        .route("/ui/logout", post(logout))
        .route_layer(middleware::from_fn_with_state(
            console.clone(),
            require_session,
        ));
    open.merge(closed)
        .route_layer(middleware::map_response(pages::security_headers))
        .with_state(console)
}

// ---------------------------------------------------------------------------------------------
// Sessions

/// The value of the cookie `name`, if the request carries one.
fn request_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        })
}

/// The value of the session cookie, if the request carries one.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    request_cookie(headers, SESSION_COOKIE)
}

/// Lets a request with an open session through, with [`SignedIn`] in its extensions; sends
/// any other to the sign-in page.
async fn require_session(
    State(console): State<Console>,
    mut request: Request,
    next: Next,
) -> Response {
    let signed_in = session_cookie(request.headers()).and_then(|id| {
        let session = console.sessions.get(id)?;
        Some(SignedIn {
            id: id.into(),
            session,
        })
    });
    match signed_in {
        Some(signed_in) => {
            request.extensions_mut().insert(signed_in);
            next.run(request).await
        }
        None => Redirect::to("/ui/login").into_response(),
    }
}

fn cookie(console: &Console, value: &str, max_age: u64) -> HeaderValue {
    named_cookie(console, SESSION_COOKIE, "/ui", value, max_age)
}

/// The sign-in form's cookie, sent back only to `/ui/login`.
fn sign_in_cookie(console: &Console, value: &str, max_age: u64) -> HeaderValue {
    named_cookie(console, SIGN_IN_COOKIE, "/ui/login", value, max_age)
}

fn named_cookie(
    console: &Console,
    name: &str,
    path: &str,
    value: &str,
    max_age: u64,
) -> HeaderValue {
    let secure = if console.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{name}={value}; Path={path}; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    );
    HeaderValue::try_from(cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The form in `body`, decoded; at most [`MAX_FORM`] bytes.
async fn read_form(body: Body) -> Result<Vec<(String, String)>, ConsoleError> {
    let bytes = axum::body::to_bytes(body, MAX_FORM)
        .await
        .map_err(|_| ConsoleError::FormTooLarge)?;
    Ok(form_urlencoded::parse(&bytes).into_owned().collect())
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// `Ok` when `form` carries the session's CSRF token.
fn check_csrf(form: &[(String, String)], session: &Session) -> Result<(), ConsoleError> {
    match field(form, "csrf") {
        Some(given) if session.csrf_matches(given) => Ok(()),
        _ => {
            tracing::warn!(
                operator = session.operator(),
                "console form without its CSRF token refused"
            );
            Err(ConsoleError::CsrfMismatch)
        }
    }
}

/// The sign-in page with `error` (answered with `status`): its form carries the CSRF field of
/// the sign-in cookie the browser holds, or of a new one set with the answer.
fn sign_in_form(
    console: &Console,
    headers: &HeaderMap,
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    let held = request_cookie(headers, SIGN_IN_COOKIE)
        .and_then(|cookie| console.sign_in.field_for(cookie));
    let (new_cookie, field) = match held {
        Some(field) => (None, field),
        None => {
            let (cookie, field) = console.sign_in.issue();
            (Some(cookie), field)
        }
    };
    let mut response = (status, Html(pages::login(error, &field).into_string())).into_response();
    if let Some(cookie) = new_cookie {
        response.headers_mut().append(
            SET_COOKIE,
            sign_in_cookie(console, &cookie, SIGN_IN_FORM_TTL.as_secs()),
        );
    }
    response
}

async fn login_page(State(console): State<Console>, headers: HeaderMap) -> Response {
    sign_in_form(&console, &headers, StatusCode::OK, None)
}

async fn login(State(console): State<Console>, request: Request) -> Result<Response, ConsoleError> {
    let headers = request.headers().clone();
    let form = read_form(request.into_body()).await?;
    // The form's own CSRF check first: a forged sign-in learns nothing about the token.
    if !console.sign_in.check(
        request_cookie(&headers, SIGN_IN_COOKIE),
        field(&form, "csrf"),
    ) {
        tracing::warn!("console sign-in without its form's CSRF token refused");
        return Ok(sign_in_form(
            &console,
            &headers,
            StatusCode::FORBIDDEN,
            Some(
                "This sign-in form was not issued to this browser (another site sent it, or it expired): sign in again.",
            ),
        ));
    }
    let token = field(&form, "token").unwrap_or("");
    let Some(operator) = console.credentials.check(token) else {
        tracing::warn!("console sign-in with a wrong token refused");
        return Ok(sign_in_form(
            &console,
            &headers,
            StatusCode::UNAUTHORIZED,
            Some("That token is not valid."),
        ));
    };
    tracing::info!(operator = &*operator, "console sign-in");
    let (id, _) = console.sessions.open(operator);
    let mut response = Redirect::to("/ui/").into_response();
    response.headers_mut().append(
        SET_COOKIE,
        cookie(&console, &id, console.sessions.ttl().as_secs()),
    );
    // The form is used: its cookie goes.
    response
        .headers_mut()
        .append(SET_COOKIE, sign_in_cookie(&console, "", 0));
    Ok(response)
}

async fn logout(
    State(console): State<Console>,
    axum::Extension(signed_in): axum::Extension<SignedIn>,
    request: Request,
) -> Result<Response, ConsoleError> {
    let form = read_form(request.into_body()).await?;
    check_csrf(&form, &signed_in.session)?;
    console.sessions.close(&signed_in.id);
    tracing::info!(operator = signed_in.session.operator(), "console sign-out");
    let mut response = Redirect::to("/ui/login").into_response();
    response
        .headers_mut()
        .insert(SET_COOKIE, cookie(&console, "", 0));
    Ok(response)
}

async fn css() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/css; charset=utf-8")],
        [(CACHE_CONTROL, "no-cache")],
        CSS,
    )
}

async fn js() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/javascript; charset=utf-8")],
        [(CACHE_CONTROL, "no-cache")],
        JS,
    )
}

// ---------------------------------------------------------------------------------------------
// Reading the view

/// Runs `work` off the async threads (it scans the view or reads the audit store).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ConsoleError> + Send + 'static,
) -> Result<T, ConsoleError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(ConsoleError::Task)?
}

/// A device id, user or search from a request: trimmed, not absurdly long, no control characters.
fn checked_name(what: &str, value: &str) -> Result<String, ConsoleError> {
    let value = value.trim();
    if value.len() > MAX_NAME_LEN || value.chars().any(char::is_control) {
        return Err(ConsoleError::BadForm(format!(
            "{what} is too long or has control characters"
        )));
    }
    Ok(value.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Pages

async fn overview(
    State(console): State<Console>,
    axum::Extension(signed_in): axum::Extension<SignedIn>,
) -> Result<Html<String>, ConsoleError> {
    let compliance = console.compliance.clone();
    let store = console.audit.as_ref().map(|(store, _)| store.clone());
    let counts = console.blocked_count.clone();
    let (view_size, blocked, loaded, recent) = blocking(move || {
        let view = compliance.view();
        let blocked = counts.get(&compliance);
        let recent = match store {
            Some(store) => Some(recent_transitions(&store)?),
            None => None,
        };
        Ok((view.len(), blocked, view.is_loaded(), recent))
    })
    .await?;
    let reachability = futures_util::future::join_all(
        console
            .probes
            .iter()
            .map(|(name, probe)| async move { (name.clone(), crate::health::ask(probe).await) }),
    )
    .await;
    let overview = Overview {
        ready: loaded,
        sync: console.sync.as_ref().map(|sync| sync.status()),
        view_size,
        blocked,
        decisions_per_second: console.decision_rate.as_ref().map(|rate| rate.per_second()),
        reachability,
        version: &console.version,
        recent,
    };
    Ok(Html(
        pages::overview(&signed_in.session, &overview).into_string(),
    ))
}

/// The last few transitions of the trail, newest first.
fn recent_transitions(store: &audit_trail::store::Store) -> Result<Vec<Entry>, ConsoleError> {
    let page = store
        .query(&Query {
            limit: 200,
            ..Query::default()
        })
        .map_err(ConsoleError::Audit)?;
    Ok(page
        .entries
        .into_iter()
        .filter(|entry| matches!(entry.event, AuditEvent::Transition { .. }))
        .take(10)
        .collect())
}

async fn devices(
    State(console): State<Console>,
    axum::Extension(signed_in): axum::Extension<SignedIn>,
    RawQuery(raw): RawQuery,
) -> Result<Html<String>, ConsoleError> {
    let mut query = DevicesQuery::default();
    for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match &*key {
            "q" => query.q = checked_name("the search", &value)?,
            "filter" => {
                query.filter = match &*value {
                    "" => None,
                    "blocked" => Some(false),
                    "allowed" => Some(true),
                    _ => {
                        return Err(ConsoleError::BadForm(
                            "filter is blocked, allowed or empty".into(),
                        ));
                    }
                }
            }
            "match" => {
                query.contains = match &*value {
                    "" | "exact" => false,
                    "contains" => true,
                    _ => {
                        return Err(ConsoleError::BadForm(
                            "match is exact, contains or empty".into(),
                        ));
                    }
                }
            }
            "page" => {
                query.page = value
                    .parse::<usize>()
                    .ok()
                    .filter(|page| *page >= 1)
                    .ok_or_else(|| ConsoleError::BadForm("page is a number from 1".into()))?;
            }
            _ => {}
        }
    }
    query.page = query.page.max(1);
    let compliance = console.compliance.clone();
    let asked = Search {
        q: query.q.clone(),
        contains: query.contains,
        filter: query.filter,
        page: query.page,
        per_page: DEVICES_PER_PAGE,
    };
    let found = blocking(move || {
        let view = compliance.view();
        let policy = compliance.policy();
        Ok(search::search(&view, &policy, now_for(&policy), &asked))
    })
    .await?;
    Ok(Html(
        pages::devices(&signed_in.session, &query, &found).into_string(),
    ))
}

async fn device(
    State(console): State<Console>,
    axum::Extension(signed_in): axum::Extension<SignedIn>,
    Path(device_id): Path<String>,
) -> Result<Response, ConsoleError> {
    let id = DeviceId::new(&checked_name("the device id", &device_id)?);
    if id.as_str().is_empty() {
        return Err(ConsoleError::BadForm("the device id is empty".into()));
    }
    let view = console.compliance.view();
    let policy = console.compliance.policy();
    let record = view.device(id.as_str()).cloned();
    let decision = policy.decide_for(
        Some(id.as_str()),
        record.as_deref(),
        None,
        view.overrides(),
        now_for(&policy),
    );
    let device_override = view.overrides().devices.get(&id).copied();
    let user_override = record
        .as_ref()
        .and_then(|r| r.user.as_deref())
        .and_then(|user| view.overrides().for_user(user));
    let trail = match &console.audit {
        Some((store, _)) => {
            let store = store.clone();
            let device = id.as_str().to_owned();
            Some(
                blocking(move || {
                    store
                        .query(&Query {
                            device: Some(device),
                            limit: 50,
                            ..Query::default()
                        })
                        .map(|page| page.entries)
                        .map_err(ConsoleError::Audit)
                })
                .await?,
            )
        }
        None => None,
    };
    let known = record.is_some() || device_override.is_some();
    let recent = console
        .compliance
        .recent_requests()
        .for_device(id.as_str(), RECENT_ON_PAGE);
    let page = pages::device(
        &signed_in.session,
        &pages::DevicePage {
            id: &id,
            record: record.as_deref(),
            decision,
            device_override,
            user_override,
            trail: trail.as_deref(),
            recent: &recent,
        },
    );
    let status = if known {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    Ok((status, Html(page.into_string())).into_response())
}

/// How many of a device's recent requests its page lists.
const RECENT_ON_PAGE: usize = 20;

/// `/ui/devices/{id}` with the id made safe for a path.
pub(crate) fn device_path(id: &str) -> String {
    escaped_path("/ui/devices/", id)
}

/// `/ui/users/{upn}` with the UPN made safe for a path.
pub(crate) fn user_path(user: &str) -> String {
    escaped_path("/ui/users/", user)
}

fn escaped_path(prefix: &str, name: &str) -> String {
    let mut path = String::from(prefix);
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            path.push(byte as char);
        } else {
            path.push_str(&format!("%{byte:02X}"));
        }
    }
    path
}

/// The action and reason of an override form (`action` = `allow`, `block` or `clear`).
fn override_form(
    form: &[(String, String)],
) -> Result<(Option<Override>, Option<String>), ConsoleError> {
    let action = match field(form, "action") {
        Some("allow") => Some(Override::Allow),
        Some("block") => Some(Override::Block),
        Some("clear") => None,
        _ => {
            return Err(ConsoleError::BadForm(
                "action is allow, block or clear".into(),
            ));
        }
    };
    let reason = field(form, "reason").unwrap_or("").trim();
    if reason.len() > MAX_REASON_LEN || reason.chars().any(char::is_control) {
        return Err(ConsoleError::BadForm(format!(
            "the reason is at most {MAX_REASON_LEN} bytes, without control characters"
        )));
    }
    Ok((action, (!reason.is_empty()).then(|| reason.to_owned())))
}

fn action_name(action: Option<Override>) -> &'static str {
    action.map_or("clear", |a| match a {
        Override::Allow => "allow",
        Override::Block => "block",
    })
}

/// Records the override `operator` made on `target` in the audit trail, if there is one.
fn record_override(
    console: &Console,
    operator: &str,
    target: OverrideTarget,
    action: Option<Override>,
    reason: Option<String>,
) {
    if let Some((_, sink)) = &console.audit {
        let change = OverrideChange::new(Operator::named(operator), target, action, reason);
        sink.record(Record::override_change(&change));
    }
}

async fn set_override(
    State(console): State<Console>,
    axum::Extension(signed_in): axum::Extension<SignedIn>,
    Path(device_id): Path<String>,
    request: Request,
) -> Result<Response, ConsoleError> {
    let form = read_form(request.into_body()).await?;
    check_csrf(&form, &signed_in.session)?;
    let id = DeviceId::new(&checked_name("the device id", &device_id)?);
    if id.as_str().is_empty() {
        return Err(ConsoleError::BadForm("the device id is empty".into()));
    }
    let (action, reason) = override_form(&form)?;
    let operator = signed_in.session.operator();
    let transitions = console.compliance.set_device_override(id.as_str(), action);
    record_override(
        &console,
        operator,
        OverrideTarget::Device(id.clone()),
        action,
        reason,
    );
    tracing::info!(
        operator,
        device = %id,
        action = action_name(action),
        transitions = transitions.len(),
        "device override changed on the console"
    );
    Ok(Redirect::to(&device_path(id.as_str())).into_response())
}

/// A user (UPN) from a path: checked, not empty, lower case (as overrides keep it).
fn user_name(user: &str) -> Result<String, ConsoleError> {
    let user = checked_name("the user", user)?.to_ascii_lowercase();
    if user.is_empty() {
        return Err(ConsoleError::BadForm("the user is empty".into()));
    }
    Ok(user)
}

/// `/ui/users/{upn}`: the user's override, their devices with decisions, their audit entries,
/// and the form to allow, block or clear the user's override.
async fn user(
    State(console): State<Console>,
    axum::Extension(signed_in): axum::Extension<SignedIn>,
    Path(user): Path<String>,
) -> Result<Response, ConsoleError> {
    let user = user_name(&user)?;
    let compliance = console.compliance.clone();
    let store = console.audit.as_ref().map(|(store, _)| store.clone());
    let name = user.clone();
    let (user_override, rows, trail) = blocking(move || {
        let view = compliance.view();
        let policy = compliance.policy();
        let now = now_for(&policy);
        let mut rows: Vec<DeviceRow> = view
            .devices_of_user(&name)
            .into_iter()
            .map(|record| DeviceRow {
                decision: decide(&view, &policy, now, record),
                record: record.clone(),
            })
            .collect();
        rows.sort_unstable_by(|a, b| a.record.device_id.cmp(&b.record.device_id));
        let trail = match store {
            Some(store) => Some(
                store
                    .query(&Query {
                        user: Some(name.clone()),
                        limit: 50,
                        ..Query::default()
                    })
                    .map(|page| page.entries)
                    .map_err(ConsoleError::Audit)?,
            ),
            None => None,
        };
        Ok((view.overrides().for_user(&name), rows, trail))
    })
    .await?;
    let known = user_override.is_some() || !rows.is_empty();
    let page = pages::user(
        &signed_in.session,
        &pages::UserPage {
            user: &user,
            user_override,
            devices: &rows,
            trail: trail.as_deref(),
        },
    );
    let status = if known {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    Ok((status, Html(page.into_string())).into_response())
}

async fn set_user_override(
    State(console): State<Console>,
    axum::Extension(signed_in): axum::Extension<SignedIn>,
    Path(user): Path<String>,
    request: Request,
) -> Result<Response, ConsoleError> {
    let form = read_form(request.into_body()).await?;
    check_csrf(&form, &signed_in.session)?;
    let user = user_name(&user)?;
    let (action, reason) = override_form(&form)?;
    let operator = signed_in.session.operator();
    let transitions = console.compliance.set_user_override(&user, action);
    record_override(
        &console,
        operator,
        OverrideTarget::User(user.clone()),
        action,
        reason,
    );
    tracing::info!(
        operator,
        user = %user,
        action = action_name(action),
        transitions = transitions.len(),
        "user override changed on the console"
    );
    Ok(Redirect::to(&user_path(&user)).into_response())
}

async fn audit(
    State(console): State<Console>,
    axum::Extension(signed_in): axum::Extension<SignedIn>,
    RawQuery(raw): RawQuery,
) -> Result<Html<String>, ConsoleError> {
    let mut filter = AuditFilter::default();
    let mut query = Query {
        limit: 100,
        ..Query::default()
    };
    let time = |key: &str, value: &str| {
        humantime::parse_rfc3339_weak(value).map_err(|_| {
            ConsoleError::BadForm(format!("{key} is a time such as 2026-01-31T12:00:00Z"))
        })
    };
    for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        let value = checked_name(&key, &value)?;
        if value.is_empty() {
            continue;
        }
        match &*key {
            "device" => query.device = Some(value.clone()),
            "user" => query.user = Some(value.clone()),
            "since" => query.since = Some(time("since", &value)?),
            "until" => query.until = Some(time("until", &value)?),
            "cursor" => {
                query.cursor = Some(
                    value
                        .parse()
                        .map_err(|_| ConsoleError::BadForm("cursor is a number".into()))?,
                )
            }
            _ => continue,
        }
        filter.set(&key, value);
    }
    let page = match &console.audit {
        Some((store, _)) => {
            let store = store.clone();
            Some(blocking(move || store.query(&query).map_err(ConsoleError::Audit)).await?)
        }
        None => None,
    };
    Ok(Html(
        pages::audit(&signed_in.session, &filter, page.as_ref()).into_string(),
    ))
}

/// `/ui/config`: the effective configuration the gateway gave, secrets redacted by it.
async fn configuration(
    State(console): State<Console>,
    axum::Extension(signed_in): axum::Extension<SignedIn>,
) -> Html<String> {
    Html(pages::configuration(&signed_in.session, console.configuration.as_deref()).into_string())
}

// ---------------------------------------------------------------------------------------------
// Live updates

/// How often an idle event stream checks that its session is still open.
const SESSION_CHECK: std::time::Duration = std::time::Duration::from_secs(15);

/// `/ui/events`: every decision change from now on, as `decision` events whose data is
/// `{"device","user","state","reason","source"}`, until the session closes or expires.
async fn events(
    State(console): State<Console>,
    axum::Extension(signed_in): axum::Extension<SignedIn>,
) -> impl IntoResponse {
    let receiver = console.compliance.subscribe();
    let sessions = console.sessions.clone();
    let open = move || sessions.get(&signed_in.id).is_some();
    Sse::new(decision_events(receiver, open)).keep_alive(KeepAlive::default())
}

fn decision_events(
    receiver: broadcast::Receiver<compliance_policy::state::Transition>,
    session_open: impl Fn() -> bool + Send + 'static,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(
        (receiver, session_open),
        |(mut receiver, session_open)| async move {
            loop {
                let received = tokio::time::timeout(SESSION_CHECK, receiver.recv()).await;
                if !session_open() {
                    return None;
                }
                let Ok(received) = received else {
                    continue;
                };
                match received {
                    Ok(transition) => {
                        let data = serde_json::json!({
                            "device": transition.device_id.as_str(),
                            "user": transition.user,
                            "state": transition.after.state(),
                            "reason": transition.after.reason(),
                            "source": transition.source,
                        });
                        let event = Event::default().event("decision").data(data.to_string());
                        return Some((Ok(event), (receiver, session_open)));
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "a console event stream fell behind");
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    )
}
