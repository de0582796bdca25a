//! A small, bounded, namespace-aware element tree read with quick-xml.
//!
//! EWS documents are matched on (namespace URI, local name), never on prefixes: Exchange writes
//! `s:`/`m:`/`t:`, streaming chunks use a default namespace and `soap11:`, and a gateway or
//! another server may choose others.

use quick_xml::NsReader;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;

/// Nesting deeper than this is refused: EWS responses are a dozen levels deep at most, and a
/// hostile peer must not make us recurse or allocate without bound.
const MAX_DEPTH: usize = 48;
/// More elements than this in one document are refused, for the same reason.
const MAX_ELEMENTS: usize = 200_000;

/// One element with its expanded name, its unqualified attributes, its children and its text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Element {
    pub ns: Option<String>,
    pub local: String,
    attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    text: String,
}

impl Element {
    /// Whether this element is `{ns}local`.
    pub fn is(&self, ns: &str, local: &str) -> bool {
        self.local == local && self.ns.as_deref() == Some(ns)
    }

    /// The first child named `{ns}local`.
    pub fn child(&self, ns: &str, local: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.is(ns, local))
    }

    /// The children named `{ns}local`.
    pub fn children_named<'a>(
        &'a self,
        ns: &'a str,
        local: &'a str,
    ) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.is(ns, local))
    }

    /// The trimmed text of the first child named `{ns}local`, if present and not empty.
    pub fn child_text(&self, ns: &str, local: &str) -> Option<String> {
        self.child(ns, local)
            .map(|c| c.text().to_string())
            .filter(|t| !t.is_empty())
    }

    /// The first element named `{ns}local` in this subtree, this element included.
    #[cfg(test)]
    pub fn find(&self, ns: &str, local: &str) -> Option<&Element> {
        if self.is(ns, local) {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(ns, local))
    }

    /// An attribute without a namespace prefix (EWS attributes are unqualified).
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The character data directly inside this element, trimmed.
    pub fn text(&self) -> &str {
        self.text.trim()
    }

    /// The untrimmed character data: a subject may begin or end with spaces.
    pub fn raw_text(&self) -> &str {
        &self.text
    }
}

/// Parses one whole document into its root element.
///
/// Refuses what is not well-formed, undeclared prefixes, DTDs (no entity expansion tricks),
/// too deep nesting, too many elements, and non-blank text outside the root.
pub(crate) fn parse(input: &[u8]) -> Result<Element, String> {
    let mut reader = NsReader::from_reader(input);
    let config = reader.config_mut();
    config.expand_empty_elements = false;
    config.check_end_names = true;
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let (resolved, event) = reader
            .read_resolved_event()
            .map_err(|e| format!("not well-formed XML: {e}"))?;
        let ns = match resolved {
            ResolveResult::Bound(ns) => Some(String::from_utf8_lossy(ns.as_ref()).into_owned()),
            ResolveResult::Unbound => None,
            ResolveResult::Unknown(prefix) => {
                return Err(format!(
                    "undeclared namespace prefix {}",
                    String::from_utf8_lossy(&prefix)
                ));
            }
        };
        match event {
            Event::Start(_) | Event::Empty(_) if root.is_some() => {
                return Err("content after the root element".into());
            }
            Event::Start(start) => {
                count += 1;
                if stack.len() >= MAX_DEPTH || count > MAX_ELEMENTS {
                    return Err("the document nests too deeply or has too many elements".into());
                }
                stack.push(element(&reader, ns, &start)?);
            }
            Event::Empty(start) => {
                count += 1;
                if stack.len() >= MAX_DEPTH || count > MAX_ELEMENTS {
                    return Err("the document nests too deeply or has too many elements".into());
                }
                let done = element(&reader, ns, &start)?;
                close(&mut stack, &mut root, done);
            }
            Event::End(_) => {
                let done = stack.pop().ok_or("unbalanced end tag")?;
                close(&mut stack, &mut root, done);
            }
            Event::Text(text) => {
                let text = text
                    .xml10_content()
                    .map_err(|e| format!("undecodable text: {e}"))?;
                push_text(&mut stack, &text)?;
            }
            Event::CData(data) => {
                let text = data
                    .xml10_content()
                    .map_err(|e| format!("undecodable CDATA: {e}"))?;
                push_text(&mut stack, &text)?;
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
                            .map_err(|e| format!("undecodable reference: {e}"))?;
                        predefined_entity(&name)
                            .ok_or_else(|| format!("unknown entity &{name};"))?
                            .to_string()
                    }
                };
                push_text(&mut stack, &resolved)?;
            }
            Event::DocType(_) => return Err("document type declarations are not accepted".into()),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err("the document ends inside an element".into());
    }
    root.ok_or_else(|| "the document has no root element".into())
}

fn predefined_entity(name: &str) -> Option<&'static str> {
    Some(match name {
        "lt" => "<",
        "gt" => ">",
        "amp" => "&",
        "apos" => "'",
        "quot" => "\"",
        _ => return None,
    })
}

fn push_text(stack: &mut [Element], text: &str) -> Result<(), String> {
    match stack.last_mut() {
        Some(current) => {
            current.text.push_str(text);
            Ok(())
        }
        None if text.trim().is_empty() => Ok(()),
        None => Err("text outside the root element".into()),
    }
}

fn close(stack: &mut [Element], root: &mut Option<Element>, done: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(done),
        None => *root = Some(done),
    }
}

fn element(
    reader: &NsReader<&[u8]>,
    ns: Option<String>,
    start: &BytesStart<'_>,
) -> Result<Element, String> {
    let local = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
    let mut attrs = Vec::new();
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|e| format!("bad attribute: {e}"))?;
        let key = attribute.key;
        // Namespace declarations are the reader's business; prefixed attributes (xml:lang,
        // xsi:type) carry nothing EWS clients read.
        if key.as_namespace_binding().is_some() || key.prefix().is_some() {
            continue;
        }
        let value = attribute
            .decode_and_unescape_value(reader.decoder())
            .map_err(|e| format!("bad attribute value: {e}"))?;
        attrs.push((
            String::from_utf8_lossy(key.local_name().as_ref()).into_owned(),
            value.into_owned(),
        ));
    }
    Ok(Element {
        ns,
        local,
        attrs,
        children: Vec::new(),
        text: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_matched_by_namespace_not_prefix() {
        let a = parse(br#"<a:x xmlns:a="urn:n"><a:y k="v">t</a:y></a:x>"#).unwrap();
        let b = parse(br#"<x xmlns="urn:n"><y k="v">t</y></x>"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.child("urn:n", "y").unwrap().attr("k"), Some("v"));
    }

    #[test]
    fn entities_and_char_refs_are_resolved() {
        let e = parse(b"<x>A &amp; B &#x263A; &lt;</x>").unwrap();
        assert_eq!(e.text(), "A & B \u{263A} <");
    }

    #[test]
    fn hostile_documents_are_refused() {
        for doc in [
            &b"<x>"[..],
            b"<x></y>",
            b"<p:x/>",
            b"<!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>",
            b"<x/><y/>",
            b"junk",
            b"",
            b"<x>&bogus;</x>",
        ] {
            assert!(parse(doc).is_err(), "{}", String::from_utf8_lossy(doc));
        }
        let deep = "<a>".repeat(1000) + &"</a>".repeat(1000);
        assert!(parse(deep.as_bytes()).is_err());
    }
}
