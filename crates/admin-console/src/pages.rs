//! The pages, as maud templates: every value they insert is HTML-escaped.

use crate::DEVICES_PER_PAGE;
use crate::handlers::{device_path, user_path};
use crate::health::{RATE_WINDOW, Reachability};
use crate::search::Found;
use crate::session::Session;
use audit_trail::entry::{Entry, Event, Target};
use audit_trail::store::Page;
use axum::response::Response;
use compliance_policy::device::{DeviceId, DeviceRecord};
use compliance_policy::policy::{Decision, Override};
use compliance_policy::recent::{RecentRequest, RecentRequests};
use compliance_policy::sync::SyncStatus;
use http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use http::{HeaderValue, StatusCode};
use maud::{DOCTYPE, Markup, html};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Every console answer: no caching, no framing, scripts and styles only from the console itself.
pub(crate) async fn security_headers(response: Response) -> Response {
    with_security_headers(response)
}

/// [`security_headers`], synchronously.
pub(crate) fn with_security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; \
             img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// `3m 12s ago`, to the second.
fn age(time: SystemTime) -> String {
    let elapsed = SystemTime::now()
        .duration_since(time)
        .unwrap_or_default()
        .as_secs();
    format!(
        "{} ago",
        humantime::format_duration(Duration::from_secs(elapsed))
    )
}

fn layout(title: &str, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · SEG admin console" }
                link rel="stylesheet" href="/ui/assets/console.css";
            }
            body {
                header {
                    strong { "SEG admin console" }
                    @if let Some(session) = session {
                        nav aria-label="Main" {
                            ul {
                                li { a href="/ui/" { "Overview" } }
                                li { a href="/ui/devices" { "Devices" } }
                                li { a href="/ui/audit" { "Audit trail" } }
                                li { a href="/ui/config" { "Configuration" } }
                            }
                        }
                        form method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(session.csrf());
                            span { "Signed in as " strong { (session.operator()) } " " }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" {
                    h1 { (title) }
                    (body)
                }
                @if session.is_some() {
                    script src="/ui/assets/console.js" defer {}
                }
            }
        }
    }
}

/// The sign-in page, with `error` above the form when the last attempt failed, and `csrf` (the
/// sign-in cookie's HMAC) in its hidden field.
pub(crate) fn login(error: Option<&str>, csrf: &str) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            @if let Some(error) = error {
                p class="error" role="alert" { (error) }
            }
            form method="post" action="/ui/login" {
                input type="hidden" name="csrf" value=(csrf);
                label for="token" { "Admin or operator token" }
                input id="token" name="token" type="password" autocomplete="current-password" required autofocus;
                div { button class="primary" type="submit" { "Sign in" } }
            }
        },
    )
}

/// An error page for `status`.
pub(crate) fn error_page(status: StatusCode, message: &str) -> axum::response::Html<String> {
    let title = status.canonical_reason().unwrap_or("Error");
    axum::response::Html(
        layout(
            title,
            None,
            html! {
                p class="error" role="alert" { (message) }
                p { a href="/ui/" { "Back to the overview" } }
            },
        )
        .into_string(),
    )
}

fn decision_badge(decision: &Decision) -> Markup {
    html! {
        strong data-live="state" class=(decision.state()) { (decision.state()) }
        " "
        "(" span data-live="reason" { (decision.reason()) } ")"
    }
}

fn override_name(action: Option<Override>) -> &'static str {
    match action {
        Some(Override::Allow) => "allow",
        Some(Override::Block) => "block",
        None => "none",
    }
}

/// What the overview shows.
pub(crate) struct Overview<'a> {
    pub(crate) ready: bool,
    pub(crate) sync: Option<SyncStatus>,
    pub(crate) view_size: usize,
    pub(crate) blocked: usize,
    /// `None`: decisions are not counted; `Some(None)`: not measured for a second yet.
    pub(crate) decisions_per_second: Option<Option<f64>>,
    pub(crate) reachability: Vec<(Arc<str>, Reachability)>,
    pub(crate) version: &'a str,
    pub(crate) recent: Option<Vec<Entry>>,
}

pub(crate) fn overview(session: &Session, overview: &Overview<'_>) -> Markup {
    layout(
        "Overview",
        Some(session),
        html! {
            dl {
                dt { "Readiness" }
                dd {
                    @if overview.ready { "ready: a compliance view is loaded" }
                    @else { strong class="blocked" { "not ready" } ": no compliance view loaded yet" }
                }
                dt { "UEM sync" }
                dd {
                    @match &overview.sync {
                        None => { "no syncer" }
                        Some(sync) => {
                            @if let Some(error) = &sync.last_error {
                                strong class="blocked" { "failing" } ": " (error)
                            } @else if sync.successes > 0 {
                                "ok"
                            } @else {
                                "not synced yet"
                            }
                            ul {
                                li { "last full sync: " @match sync.last_full_sync {
                                    Some(at) => { time datetime=(rfc3339(at)) { (rfc3339(at)) } " (" (age(at)) ")" }
                                    None => { "never" }
                                } }
                                li { "last delta sync: " @match sync.last_delta_sync {
                                    Some(at) => { time datetime=(rfc3339(at)) { (rfc3339(at)) } " (" (age(at)) ")" }
                                    None => { "never" }
                                } }
                                li { (sync.successes) " succeeded, " (sync.failures) " failed" }
                            }
                        }
                    }
                }
                dt { "Devices in the view" }
                dd { (overview.view_size) }
                dt { "Blocked" }
                dd { a href="/ui/devices?filter=blocked" { (overview.blocked) } }
                dt { "Decisions per second" }
                dd id="decisions-per-second" {
                    @match overview.decisions_per_second {
                        None => { "not counted (the compliance state has no metrics)" }
                        Some(None) => { "measuring…" }
                        Some(Some(rate)) => {
                            (format!("{rate:.1}")) " (over the last " (humantime::format_duration(RATE_WINDOW)) ")"
                        }
                    }
                }
                @for (name, reachability) in &overview.reachability {
                    dt { (name) }
                    dd data-reachability=(name) {
                        @match reachability {
                            Reachability::Reachable(detail) => { strong class="allowed" { "reachable" } ": " (detail) }
                            Reachability::Unreachable(detail) => { strong class="blocked" { "unreachable" } ": " (detail) }
                        }
                    }
                }
                dt { "Version" }
                dd { (overview.version) }
            }
            h2 { "Recent decision changes" }
            p { "New changes appear here as they happen." }
            ul id="recent-changes" aria-live="polite" {
                @match &overview.recent {
                    Some(entries) if !entries.is_empty() => {
                        @for entry in entries {
                            @if let Event::Transition { after, source, .. } = &entry.event {
                                @let device = entry.device.as_deref().unwrap_or("");
                                li data-device=(device) {
                                    a href=(device_path(device)) { (device) } " "
                                    strong data-live="state" class=(after.state) { (after.state) }
                                    " (" span data-live="reason" { (after.reason) } ", " (source) ", "
                                    (rfc3339(entry.at)) ")"
                                }
                            }
                        }
                    }
                    _ => { li id="no-recent-changes" { "None recorded yet." } }
                }
            }
        },
    )
}

/// The device list's query.
#[derive(Clone, Debug, Default)]
pub(crate) struct DevicesQuery {
    pub(crate) q: String,
    /// Substring matches only (`match=contains`), even for an exact device id or UPN.
    pub(crate) contains: bool,
    /// `Some(true)`: allowed only; `Some(false)`: blocked only.
    pub(crate) filter: Option<bool>,
    pub(crate) page: usize,
}

impl DevicesQuery {
    fn link(&self, page: usize) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if !self.q.is_empty() {
            query.append_pair("q", &self.q);
        }
        if self.contains {
            query.append_pair("match", "contains");
        }
        match self.filter {
            Some(true) => {
                query.append_pair("filter", "allowed");
            }
            Some(false) => {
                query.append_pair("filter", "blocked");
            }
            None => {}
        }
        query.append_pair("page", &page.to_string());
        format!("/ui/devices?{}", query.finish())
    }
}

/// A device of the list, with its decision.
pub(crate) struct DeviceRow {
    pub(crate) record: Arc<DeviceRecord>,
    pub(crate) decision: Decision,
}

pub(crate) fn devices(session: &Session, query: &DevicesQuery, found: &Found) -> Markup {
    let total = found.total;
    let rows = &found.rows;
    let pages = total.div_ceil(DEVICES_PER_PAGE).max(1);
    let substring_search = DevicesQuery {
        contains: true,
        page: 1,
        ..query.clone()
    };
    layout(
        "Devices",
        Some(session),
        html! {
            form method="get" action="/ui/devices" class="filters" role="search" {
                div {
                    label for="q" { "Device id, user, model or platform" }
                    input id="q" name="q" type="search" value=(query.q);
                }
                div {
                    label for="filter" { "Decision" }
                    select id="filter" name="filter" {
                        option value="" selected[query.filter.is_none()] { "any" }
                        option value="blocked" selected[query.filter == Some(false)] { "blocked" }
                        option value="allowed" selected[query.filter == Some(true)] { "allowed" }
                    }
                }
                div { button type="submit" { "Search" } }
            }
            p { (total) " devices; page " (query.page) " of " (pages) "." }
            @if found.exact {
                p id="exact-match" { "The exact device id or user “" (query.q) "”. "
                    a href=(substring_search.link(1)) { "Devices whose id, user, model or platform contains it" } }
            }
            (device_table(rows))
            nav aria-label="Pages" {
                @if query.page > 1 {
                    a href=(query.link(query.page - 1)) rel="prev" { "Previous page" } " "
                }
                @if query.page < pages {
                    a href=(query.link(query.page + 1)) rel="next" { "Next page" }
                }
            }
        },
    )
}

/// A table of devices with their decisions.
fn device_table(rows: &[DeviceRow]) -> Markup {
    html! {
        div class="scroll" {
            table {
                caption class="visually-hidden" { "Devices and their decisions" }
                thead { tr {
                    th scope="col" { "Device id" }
                    th scope="col" { "User" }
                    th scope="col" { "Platform" }
                    th scope="col" { "Model" }
                    th scope="col" { "Decision" }
                } }
                tbody {
                    @for row in rows {
                        tr data-device=(row.record.device_id.as_str()) {
                            td { a href=(device_path(row.record.device_id.as_str())) { (row.record.device_id.as_str()) } }
                            td { @if let Some(user) = row.record.user.as_deref() { a href=(user_path(user)) { (user) } } }
                            td { (row.record.platform.as_deref().unwrap_or("")) }
                            td { (row.record.model.as_deref().unwrap_or("")) }
                            td { (decision_badge(&row.decision)) }
                        }
                    }
                }
            }
        }
    }
}

/// What a device's page shows.
pub(crate) struct DevicePage<'a> {
    pub(crate) id: &'a DeviceId,
    pub(crate) record: Option<&'a DeviceRecord>,
    pub(crate) decision: Decision,
    pub(crate) device_override: Option<Override>,
    pub(crate) user_override: Option<Override>,
    pub(crate) trail: Option<&'a [Entry]>,
    /// Its last requests through the enforcement layer, newest first.
    pub(crate) recent: &'a [RecentRequest],
}

fn optional(value: Option<&str>) -> &str {
    value.unwrap_or("—")
}

fn yes_no(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    }
}

fn serialized<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => "unknown".into(),
    }
}

pub(crate) fn device(session: &Session, page: &DevicePage<'_>) -> Markup {
    let id = page.id.as_str();
    layout(
        &format!("Device {id}"),
        Some(session),
        html! {
            section aria-labelledby="decision-heading" data-device=(id) {
                h2 id="decision-heading" { "Decision" }
                p id="decision" aria-live="polite" { (decision_badge(&page.decision)) }
                p { "Device override: " (override_name(page.device_override))
                    "; user override: " (override_name(page.user_override)) }
            }
            section aria-labelledby="override-heading" {
                h2 id="override-heading" { "Override" }
                (override_form(session, &format!("{}/override", device_path(id))))
                @if let Some(user) = page.record.and_then(|r| r.user.as_deref()) {
                    p { "To allow or block every device of " (user) ": "
                        a href=(user_path(user)) { "the user's page" } "." }
                }
            }
            section aria-labelledby="record-heading" {
                h2 id="record-heading" { "UEM record" }
                @match page.record {
                    None => { p { "The UEM console does not know this device." } }
                    Some(record) => {
                        dl {
                            dt { "EAS device id" } dd { (record.device_id.as_str()) }
                            dt { "UEM device id" } dd { (record.uem_id.map_or("—".into(), |id| id.to_string())) }
                            dt { "User" } dd { @match record.user.as_deref() {
                                Some(user) => { a href=(user_path(user)) { (user) } }
                                None => { "—" }
                            } }
                            dt { "E-mail" } dd { (optional(record.email.as_deref())) }
                            dt { "Platform" } dd { (optional(record.platform.as_deref())) }
                            dt { "Model" } dd { (optional(record.model.as_deref())) }
                            dt { "OS version" } dd { (optional(record.os_version.as_deref())) }
                            dt { "EAS device type" } dd { (optional(record.eas_device_type.as_deref())) }
                            dt { "Mail client" } dd { (optional(record.mail_client.as_deref())) }
                            dt { "Enrollment" } dd { (serialized(&record.enrollment)) }
                            dt { "Compliance" } dd { (serialized(&record.compliance)) }
                            dt { "Managed" } dd { (yes_no(Some(record.managed))) }
                            dt { "Managed mail client" } dd { (yes_no(Some(record.managed_email_client))) }
                            dt { "Compromised" } dd { (yes_no(Some(record.compromised))) }
                            dt { "Encrypted" } dd { (yes_no(record.encrypted)) }
                            dt { "ActiveSync profile" } dd { (yes_no(record.activesync_profile)) }
                            dt { "Last seen" } dd { (record.last_seen.map_or("—".into(), |s| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s)))) }
                        }
                    }
                }
            }
            section aria-labelledby="recent-heading" {
                h2 id="recent-heading" { "Recent requests" }
                @if page.recent.is_empty() {
                    p { "No request from this device among the gateway's last "
                        (RecentRequests::CAPACITY) " decisions." }
                } @else {
                    table {
                        caption { "The device's last requests through the gateway, newest first; repeats within a second in one row" }
                        thead { tr { th scope="col" { "Time" } th scope="col" { "EWS operation or ActiveSync command" } th scope="col" { "Decision" } th scope="col" { "Requests" } } }
                        tbody {
                            @for request in page.recent {
                                tr {
                                    td { (rfc3339(request.at)) }
                                    td { (if request.operation.is_empty() { "—" } else { &request.operation })  }
                                    td { (decision_badge(&request.decision)) }
                                    td class="count" { (request.count) }
                                }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="trail-heading" {
                h2 id="trail-heading" { "Audit trail" }
                @match page.trail {
                    None => { p { "No audit trail is configured." } }
                    Some(entries) => { (entries_table(entries)) }
                }
                p { a href={ "/ui/audit?device=" (id) } { "All of this device's entries" } }
            }
        },
    )
}

/// The form to allow, block or clear an override, posted to `action`.
fn override_form(session: &Session, action: &str) -> Markup {
    html! {
        form method="post" action=(action) {
            input type="hidden" name="csrf" value=(session.csrf());
            label for="reason" { "Reason (recorded in the audit trail)" }
            input id="reason" name="reason" type="text" maxlength="1024" size="40";
            div {
                button type="submit" name="action" value="allow" { "Allow" }
                button type="submit" name="action" value="block" { "Block" }
                button type="submit" name="action" value="clear" { "Clear override" }
            }
        }
    }
}

/// What a user's page shows.
pub(crate) struct UserPage<'a> {
    /// The lower-case UPN.
    pub(crate) user: &'a str,
    pub(crate) user_override: Option<Override>,
    pub(crate) devices: &'a [DeviceRow],
    pub(crate) trail: Option<&'a [Entry]>,
}

pub(crate) fn user(session: &Session, page: &UserPage<'_>) -> Markup {
    let user = page.user;
    layout(
        &format!("User {user}"),
        Some(session),
        html! {
            section aria-labelledby="user-override-heading" {
                h2 id="user-override-heading" { "User override" }
                p id="user-override" { "User override: " strong { (override_name(page.user_override)) } }
                p { "A user override applies to every device of the user, unless the device has an override of its own." }
                (override_form(session, &format!("{}/override", user_path(user))))
            }
            section aria-labelledby="devices-heading" {
                h2 id="devices-heading" { "Devices" }
                @if page.devices.is_empty() {
                    p { "The UEM console lists no device of this user." }
                } @else {
                    (device_table(page.devices))
                }
            }
            section aria-labelledby="trail-heading" {
                h2 id="trail-heading" { "Audit trail" }
                @match page.trail {
                    None => { p { "No audit trail is configured." } }
                    Some(entries) => { (entries_table(entries)) }
                }
                p { a href={ "/ui/audit?user=" (user) } { "All of this user's entries" } }
            }
        },
    )
}

fn describe(event: &Event) -> String {
    match event {
        Event::Transition {
            before,
            after,
            source,
        } => format!(
            "{} ({}) → {} ({}) by {source}",
            before.state, before.reason, after.state, after.reason
        ),
        Event::OverrideSet {
            actor,
            target,
            action,
            reason,
        } => format!(
            "{actor} set {action} on {}{}",
            target_name(target),
            reason_suffix(reason.as_deref())
        ),
        Event::OverrideCleared {
            actor,
            target,
            reason,
        } => format!(
            "{actor} cleared the override of {}{}",
            target_name(target),
            reason_suffix(reason.as_deref())
        ),
        Event::SyncSucceeded {
            sync,
            count,
            devices,
        } => format!("{count} {sync} sync(s) succeeded; {devices} devices"),
        Event::SyncFailed { cause, count } => format!("{count} sync(s) failed: {cause}"),
        Event::GatewayStarted { version } => format!("gateway {version} started"),
        Event::GatewayStopped => "gateway stopped".into(),
        Event::ConfigurationReloaded { detail } => match detail {
            Some(detail) => format!("configuration reloaded: {detail}"),
            None => "configuration reloaded".into(),
        },
        _ => event.kind().into(),
    }
}

fn target_name(target: &Target) -> String {
    match target {
        Target::Device(id) => format!("device {id}"),
        Target::User(user) => format!("user {user}"),
    }
}

fn reason_suffix(reason: Option<&str>) -> String {
    reason.map_or_else(String::new, |reason| format!(": “{reason}”"))
}

fn entries_table(entries: &[Entry]) -> Markup {
    html! {
        @if entries.is_empty() {
            p { "No entries." }
        } @else {
            div class="scroll" {
                table {
                    caption class="visually-hidden" { "Audit entries, newest first" }
                    thead { tr {
                        th scope="col" { "When" }
                        th scope="col" { "Node" }
                        th scope="col" { "Kind" }
                        th scope="col" { "Device" }
                        th scope="col" { "User" }
                        th scope="col" { "What" }
                    } }
                    tbody {
                        @for entry in entries {
                            tr {
                                td { time datetime=(rfc3339(entry.at)) { (rfc3339(entry.at)) } }
                                td { (entry.node) }
                                td { (entry.event.kind()) }
                                td { @if let Some(device) = &entry.device { a href=(device_path(device)) { (device) } } }
                                td { (entry.user.as_deref().unwrap_or("")) }
                                td { (describe(&entry.event)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The audit page's filter, as given.
#[derive(Clone, Debug, Default)]
pub(crate) struct AuditFilter {
    device: String,
    user: String,
    since: String,
    until: String,
}

impl AuditFilter {
    pub(crate) fn set(&mut self, key: &str, value: String) {
        match key {
            "device" => self.device = value,
            "user" => self.user = value,
            "since" => self.since = value,
            "until" => self.until = value,
            _ => {}
        }
    }

    fn older(&self, cursor: u64) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (key, value) in [
            ("device", &self.device),
            ("user", &self.user),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if !value.is_empty() {
                query.append_pair(key, value);
            }
        }
        query.append_pair("cursor", &cursor.to_string());
        format!("/ui/audit?{}", query.finish())
    }
}

pub(crate) fn audit(session: &Session, filter: &AuditFilter, page: Option<&Page>) -> Markup {
    layout(
        "Audit trail",
        Some(session),
        html! {
            form method="get" action="/ui/audit" class="filters" role="search" {
                div { label for="device" { "Device id" } input id="device" name="device" type="text" value=(filter.device); }
                div { label for="user" { "User" } input id="user" name="user" type="text" value=(filter.user); }
                div { label for="since" { "Since (RFC 3339)" } input id="since" name="since" type="text" placeholder="2026-01-31T00:00:00Z" value=(filter.since); }
                div { label for="until" { "Until (RFC 3339)" } input id="until" name="until" type="text" value=(filter.until); }
                div { button type="submit" { "Filter" } }
            }
            @match page {
                None => { p { "No audit trail is configured ([audit] in the configuration)." } }
                Some(page) => {
                    (entries_table(&page.entries))
                    @if let Some(cursor) = page.next_cursor {
                        p { a href=(filter.older(cursor)) rel="next" { "Older entries" } }
                    }
                }
            }
        },
    )
}

/// The effective configuration, as the gateway rendered it (secrets already redacted).
pub(crate) fn configuration(session: &Session, text: Option<&str>) -> Markup {
    layout(
        "Configuration",
        Some(session),
        html! {
            @match text {
                Some(text) => {
                    p { "The effective configuration (defaults, file, properties, environment), as "
                        code { "seg-proxy check-config" } " prints it: every secret is redacted." }
                    pre class="config" tabindex="0" aria-label="Effective configuration" { code { (text) } }
                }
                None => { p { "The gateway gave the console no configuration to show." } }
            }
        },
    )
}
