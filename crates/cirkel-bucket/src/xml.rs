//! Just enough XML for S3's listing answers: a tree of elements with their
//! text, entities resolved.

use quick_xml::events::Event;

#[derive(Debug, Default)]
pub struct Element {
    pub name: String,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The text of the first child named `name`.
    pub fn text_of(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }

    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }
}

/// Parses a document into its root element.
pub fn parse(text: &str) -> Result<Element, String> {
    let mut reader = quick_xml::Reader::from_str(text);
    let mut stack: Vec<Element> = vec![Element::default()];
    loop {
        let event = reader.read_event().map_err(|e| format!("XML at byte {}: {e}", reader.buffer_position()))?;
        match event {
            Event::Start(s) => {
                let name = String::from_utf8_lossy(s.local_name().as_ref()).into_owned();
                stack.push(Element { name, ..Element::default() });
            }
            Event::Empty(s) => {
                let name = String::from_utf8_lossy(s.local_name().as_ref()).into_owned();
                if let Some(top) = stack.last_mut() {
                    top.children.push(Element { name, ..Element::default() });
                }
            }
            Event::End(_) => {
                let done = stack.pop().ok_or("XML: an end tag without a start")?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => return Err("XML: an end tag without a start".into()),
                }
            }
            Event::Text(t) => {
                let s = t.decode().map_err(|e| format!("XML text: {e}"))?;
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&s);
                }
            }
            Event::CData(t) => {
                let s = t.decode().map_err(|e| format!("XML text: {e}"))?;
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&s);
                }
            }
            Event::GeneralRef(r) => {
                let resolved = if r.is_char_ref() {
                    r.resolve_char_ref().map_err(|e| format!("XML character reference: {e}"))?.map(String::from)
                } else {
                    let name = r.decode().map_err(|e| format!("XML entity: {e}"))?;
                    quick_xml::escape::resolve_predefined_entity(&name).map(String::from)
                };
                let resolved = resolved.ok_or("XML: an unknown entity")?;
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&resolved);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let mut doc = stack.pop().ok_or("XML: empty document")?;
    if !stack.is_empty() {
        return Err("XML: the document ends inside an element".into());
    }
    doc.children.pop().ok_or_else(|| "XML: no root element".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entities_and_nesting_are_read() {
        let doc = parse(
            r#"<?xml version="1.0"?><R xmlns="x"><C><Key>a%20b</Key><ETag>&quot;e&#x41;&quot;</ETag></C><C><Key>c</Key></C><T>true</T></R>"#,
        )
        .unwrap();
        assert_eq!(doc.name, "R");
        let cs: Vec<_> = doc.children_named("C").collect();
        assert_eq!(cs.len(), 2);
        assert_eq!(cs[0].text_of("ETag"), Some("\"eA\""));
        assert_eq!(doc.text_of("T"), Some("true"));
        assert!(parse("<a><b></a>").is_err());
    }
}
