//! A small namespace-aware element tree, read with quick-xml.
//!
//! Requests are matched on (namespace URI, local name) pairs, never on prefixes: exchangelib
//! writes `s:`/`m:`/`t:`, the EWS Managed API `soap:`/`m:`/`t:`, and others use default
//! namespaces.

use quick_xml::NsReader;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;

/// The deepest element nesting accepted; EWS requests are shallow.
const MAX_DEPTH: usize = 64;
/// The largest number of elements accepted in one document.
const MAX_ELEMENTS: usize = 100_000;

/// One element: its expanded name, unqualified attributes, children and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Element {
    /// The namespace URI, if the element is in a namespace.
    pub ns: Option<String>,
    /// The local name.
    pub local: String,
    /// Attributes as (namespace URI, local name, value).
    pub attrs: Vec<(Option<String>, String, String)>,
    /// Child elements in document order.
    pub children: Vec<Element>,
    /// The concatenated character data directly inside this element.
    pub text: String,
}

impl Element {
    /// Whether this element has the given namespace URI and local name.
    pub fn is(&self, ns: &str, local: &str) -> bool {
        self.ns.as_deref() == Some(ns) && self.local == local
    }

    /// The first child with the given expanded name.
    pub fn child(&self, ns: &str, local: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.is(ns, local))
    }

    /// All children with the given expanded name.
    pub fn children_named<'a>(
        &'a self,
        ns: &'a str,
        local: &'a str,
    ) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.is(ns, local))
    }

    /// The value of an attribute without a namespace.
    pub fn attr(&self, local: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(ns, name, _)| ns.is_none() && name == local)
            .map(|(_, _, v)| v.as_str())
    }

    /// The first element with the given expanded name in this element's subtree, itself included.
    pub fn descendant(&self, ns: &str, local: &str) -> Option<&Element> {
        if self.is(ns, local) {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.descendant(ns, local))
    }

    /// The element's text, trimmed of surrounding white space.
    pub fn text(&self) -> &str {
        self.text.trim()
    }
}

/// Parses a whole document into its root element.
///
/// Rejects documents that are not well-formed, use an undeclared prefix, carry a DTD, nest too
/// deeply, or hold anything but white space outside the root.
pub(crate) fn parse(input: &[u8]) -> Result<Element, String> {
    let mut reader = NsReader::from_reader(input);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let (ns, event) = reader
            .read_resolved_event()
            .map_err(|e| format!("the request is not well-formed XML: {e}"))?;
        let ns = resolved(ns)?;
        match event {
            Event::Start(ref start) | Event::Empty(ref start) => {
                if root.is_some() {
                    return Err("more than one root element".into());
                }
                count += 1;
                if count > MAX_ELEMENTS || stack.len() >= MAX_DEPTH {
                    return Err("the request nests too deeply or is too large".into());
                }
                let mut element = Element {
                    ns,
                    local: String::from_utf8_lossy(start.local_name().as_ref()).into_owned(),
                    attrs: Vec::new(),
                    children: Vec::new(),
                    text: String::new(),
                };
                for attr in start.attributes() {
                    let attr = attr.map_err(|e| format!("malformed attribute: {e}"))?;
                    let key = attr.key;
                    if key.as_namespace_binding().is_some() {
                        continue;
                    }
                    let (attr_ns, local) = reader.resolve_attribute(key);
                    let attr_ns = resolved(attr_ns)?;
                    let value = attr
                        .unescape_value()
                        .map_err(|e| format!("malformed attribute value: {e}"))?;
                    element.attrs.push((
                        attr_ns,
                        String::from_utf8_lossy(local.as_ref()).into_owned(),
                        value.into_owned(),
                    ));
                }
                if matches!(event, Event::Empty(_)) {
                    close(&mut stack, &mut root, element);
                } else {
                    stack.push(element);
                }
            }
            Event::End(_) => {
                let element = stack.pop().ok_or("unexpected end tag")?;
                close(&mut stack, &mut root, element);
            }
            Event::Text(text) => {
                let text = text
                    .decode()
                    .map_err(|e| format!("undecodable text: {e}"))?;
                push_text(&mut stack, &text)?;
            }
            Event::CData(data) => {
                let data = data
                    .decode()
                    .map_err(|e| format!("undecodable CDATA: {e}"))?;
                push_text(&mut stack, &data)?;
            }
            Event::GeneralRef(reference) => {
                let resolved = match reference
                    .resolve_char_ref()
                    .map_err(|e| format!("bad character reference: {e}"))?
                {
                    Some(c) => c.to_string(),
                    None => {
                        let name = reference
                            .decode()
                            .map_err(|e| format!("undecodable entity: {e}"))?;
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| format!("unknown entity &{name};"))?
                            .to_string()
                    }
                };
                push_text(&mut stack, &resolved)?;
            }
            Event::DocType(_) => return Err("DTDs are not allowed".into()),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err("the document ends inside an element".into());
    }
    root.ok_or_else(|| "the request has no root element".into())
}

fn resolved(ns: ResolveResult<'_>) -> Result<Option<String>, String> {
    match ns {
        ResolveResult::Bound(ns) => Ok(Some(String::from_utf8_lossy(ns.as_ref()).into_owned())),
        ResolveResult::Unbound => Ok(None),
        ResolveResult::Unknown(prefix) => Err(format!(
            "undeclared namespace prefix {}",
            String::from_utf8_lossy(&prefix)
        )),
    }
}

fn close(stack: &mut [Element], root: &mut Option<Element>, element: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(element),
        None => *root = Some(element),
    }
}

fn push_text(stack: &mut [Element], text: &str) -> Result<(), String> {
    match stack.last_mut() {
        Some(top) => {
            top.text.push_str(text);
            Ok(())
        }
        None if text.trim().is_empty() => Ok(()),
        None => Err("text outside the root element".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";

    #[test]
    fn names_are_matched_by_namespace_not_prefix() {
        let a = parse(format!(r#"<x:A xmlns:x="{M}"><x:B Id="1"/></x:A>"#).as_bytes()).unwrap();
        let b = parse(format!(r#"<A xmlns="{M}"><B Id="1"></B></A>"#).as_bytes()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.child(M, "B").and_then(|b| b.attr("Id")), Some("1"));
    }

    #[test]
    fn entities_and_character_references_are_resolved() {
        let e = parse(b"<a>x &amp; &#65;&#x42; &lt;y&gt;</a>").unwrap();
        assert_eq!(e.text(), "x & AB <y>");
    }

    #[test]
    fn malformed_documents_are_errors_not_panics() {
        for bad in [
            &b"<a><b></a>"[..],
            b"<a>",
            b"",
            b"<p:a/>",
            b"<a/><b/>",
            b"<!DOCTYPE a [<!ENTITY x 'y'>]><a>&x;</a>",
            b"<a>&bogus;</a>",
            b"\xff\xfe<",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let doc = "<a>".repeat(100) + &"</a>".repeat(100);
        assert!(parse(doc.as_bytes()).is_err());
    }
}
