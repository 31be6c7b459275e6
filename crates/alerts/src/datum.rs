//! Where each Avro datum ends, from the writer schema alone: how the blocks of an object
//! container file are split into their records, and checked to hold exactly the records
//! they declare.
//!
//! Written here because `arrow-avro` decodes records without saying where a block's records
//! end (its container reader loops for ever on a block holding bytes beyond its records),
//! and `apache-avro` would bring a second Avro implementation for this one walk. Datums are
//! only skipped, following the binary encoding of the Avro specification (1.11, "Binary
//! Encoding"); `arrow-avro` still decodes them.

use std::collections::HashMap;

use serde_json::Value;

/// Nesting deeper than this is refused (a recursive schema could otherwise make a crafted
/// datum exhaust the stack).
const MAX_DEPTH: usize = 256;

/// Items of an array or map whose items take no bytes (nulls, empty records) beyond which
/// a count is refused as implausible.
const MAX_EMPTY_ITEMS: u64 = 1 << 24;

#[derive(Debug, Clone)]
enum Node {
    Null,
    Boolean,
    /// `int`, `long` and `enum`: one variable-length zig-zag integer.
    Varint,
    Float,
    Double,
    /// `bytes` and `string`: a length, then that many bytes.
    Bytes,
    Fixed(usize),
    Record(Vec<usize>),
    Array(usize),
    Map(usize),
    Union(Vec<usize>),
    /// A named type referenced before its definition was complete (resolved after parsing).
    Named(String),
}

/// The shape of a writer schema's datums, enough to skip them.
#[derive(Debug)]
pub(crate) struct Layout {
    nodes: Vec<Node>,
    root: usize,
}

struct Parser {
    nodes: Vec<Node>,
    /// Named types by full name, and by short name where that is unambiguous enough (the
    /// first definition wins).
    names: HashMap<String, usize>,
}

fn primitive(name: &str) -> Option<Node> {
    Some(match name {
        "null" => Node::Null,
        "boolean" => Node::Boolean,
        "int" | "long" => Node::Varint,
        "float" => Node::Float,
        "double" => Node::Double,
        "bytes" | "string" => Node::Bytes,
        _ => return None,
    })
}

impl Parser {
    fn push(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn full_name(name: &str, namespace: &str) -> String {
        if name.contains('.') || namespace.is_empty() {
            name.to_string()
        } else {
            format!("{namespace}.{name}")
        }
    }

    fn reference(&mut self, name: &str, namespace: &str) -> usize {
        let full = Self::full_name(name, namespace);
        let short = name.rsplit('.').next().unwrap_or(name);
        match self
            .names
            .get(&full)
            .or_else(|| self.names.get(name))
            .or_else(|| self.names.get(short))
        {
            Some(&i) => i,
            None => self.push(Node::Named(full)),
        }
    }

    fn parse(&mut self, v: &Value, namespace: &str) -> Result<usize, String> {
        match v {
            Value::String(s) => Ok(match primitive(s) {
                Some(node) => self.push(node),
                None => self.reference(s, namespace),
            }),
            Value::Array(branches) => {
                let branches = branches
                    .iter()
                    .map(|b| self.parse(b, namespace))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(self.push(Node::Union(branches)))
            }
            Value::Object(o) => {
                let Some(kind) = o.get("type") else {
                    return Err("a type object without \"type\"".into());
                };
                let Some(kind) = kind.as_str() else {
                    // {"type": {...}} or {"type": [...]}: the inner type.
                    return self.parse(kind, namespace);
                };
                if let Some(node) = primitive(kind) {
                    // A primitive, perhaps with a logical type on top (dates, decimals...).
                    return Ok(self.push(node));
                }
                match kind {
                    "array" => {
                        let items = o.get("items").ok_or("an array without \"items\"")?;
                        let items = self.parse(items, namespace)?;
                        Ok(self.push(Node::Array(items)))
                    }
                    "map" => {
                        let values = o.get("values").ok_or("a map without \"values\"")?;
                        let values = self.parse(values, namespace)?;
                        Ok(self.push(Node::Map(values)))
                    }
                    "record" | "error" | "enum" | "fixed" => {
                        let name = o
                            .get("name")
                            .and_then(Value::as_str)
                            .ok_or_else(|| format!("a {kind} without a name"))?;
                        let ns = o
                            .get("namespace")
                            .and_then(Value::as_str)
                            .unwrap_or(namespace);
                        let full = Self::full_name(name, ns);
                        let inner_ns = full.rsplit_once('.').map_or("", |(n, _)| n).to_string();
                        // Registered before the fields are read, so a record may name itself.
                        let at = self.push(Node::Null);
                        let short = full.rsplit('.').next().unwrap_or(&full).to_string();
                        self.names.insert(full, at);
                        self.names.entry(short).or_insert(at);
                        self.nodes[at] = match kind {
                            "enum" => Node::Varint,
                            "fixed" => Node::Fixed(
                                o.get("size")
                                    .and_then(Value::as_u64)
                                    .ok_or_else(|| format!("fixed '{name}' without a size"))?
                                    as usize,
                            ),
                            _ => {
                                let fields = o
                                    .get("fields")
                                    .and_then(Value::as_array)
                                    .ok_or_else(|| format!("record '{name}' without fields"))?;
                                let mut out = Vec::with_capacity(fields.len());
                                for f in fields {
                                    let t = f.get("type").ok_or_else(|| {
                                        format!("a field of record '{name}' without a type")
                                    })?;
                                    out.push(self.parse(t, &inner_ns)?);
                                }
                                Node::Record(out)
                            }
                        };
                        Ok(at)
                    }
                    other => Err(format!("unknown type '{other}'")),
                }
            }
            other => Err(format!("{other} is not an Avro type")),
        }
    }
}

impl Layout {
    /// The layout of schema `json` (Avro JSON), or why it cannot be read.
    pub(crate) fn parse(json: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
        let mut p = Parser {
            nodes: Vec::new(),
            names: HashMap::new(),
        };
        let root = p.parse(&v, "")?;
        // Resolve references made before their type was defined.
        for i in 0..p.nodes.len() {
            if let Node::Named(full) = &p.nodes[i] {
                let short = full.rsplit('.').next().unwrap_or(full);
                let target = p
                    .names
                    .get(full)
                    .or_else(|| p.names.get(short))
                    .copied()
                    .ok_or_else(|| format!("type '{full}' is not defined"))?;
                if matches!(p.nodes[target], Node::Named(_)) {
                    return Err(format!("type '{full}' is not defined"));
                }
                p.nodes[i] = p.nodes[target].clone();
            }
        }
        Ok(Self {
            nodes: p.nodes,
            root,
        })
    }

    /// Moves `*at` past the datum starting there; `None` if `data` ends first or holds
    /// something the schema does not allow (a negative length, a union branch that does
    /// not exist).
    pub(crate) fn skip(&self, data: &[u8], at: &mut usize) -> Option<()> {
        self.skip_node(self.root, data, at, 0)
    }

    fn skip_node(&self, node: usize, data: &[u8], at: &mut usize, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        let advance = |at: &mut usize, n: usize| -> Option<()> {
            let end = at.checked_add(n).filter(|e| *e <= data.len())?;
            *at = end;
            Some(())
        };
        match &self.nodes[node] {
            Node::Null => Some(()),
            Node::Boolean => advance(at, 1),
            Node::Varint => super::avro::read_long(data, at).map(drop),
            Node::Float => advance(at, 4),
            Node::Double => advance(at, 8),
            Node::Bytes => {
                let len = super::avro::read_long(data, at).filter(|l| *l >= 0)?;
                advance(at, usize::try_from(len).ok()?)
            }
            Node::Fixed(n) => advance(at, *n),
            Node::Record(fields) => {
                for f in fields {
                    self.skip_node(*f, data, at, depth + 1)?;
                }
                Some(())
            }
            Node::Union(branches) => {
                let i = super::avro::read_long(data, at)?;
                let branch = usize::try_from(i).ok().and_then(|i| branches.get(i))?;
                self.skip_node(*branch, data, at, depth + 1)
            }
            Node::Array(items) => self.skip_blocks(false, *items, data, at, depth),
            Node::Map(values) => self.skip_blocks(true, *values, data, at, depth),
            Node::Named(_) => None,
        }
    }

    /// The blocks of an array or map (a count, a byte size when the count is negative,
    /// then the items; a zero count ends them). `keyed` for maps, whose items start with a
    /// string key.
    fn skip_blocks(
        &self,
        keyed: bool,
        item: usize,
        data: &[u8],
        at: &mut usize,
        depth: usize,
    ) -> Option<()> {
        loop {
            let count = super::avro::read_long(data, at)?;
            if count == 0 {
                return Some(());
            }
            if count < 0 {
                super::avro::read_long(data, at).filter(|s| *s >= 0)?;
            }
            let count = count.unsigned_abs();
            for n in 0..count {
                let before = *at;
                if keyed {
                    let len = super::avro::read_long(data, at).filter(|l| *l >= 0)?;
                    *at = at
                        .checked_add(usize::try_from(len).ok()?)
                        .filter(|e| *e <= data.len())?;
                }
                self.skip_node(item, data, at, depth + 1)?;
                if *at == before {
                    // Items of no bytes: the rest are alike; only their number is checked.
                    if count - n > MAX_EMPTY_ITEMS {
                        return None;
                    }
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long(v: i64) -> Vec<u8> {
        let mut out = Vec::new();
        crate::avro::write_long(&mut out, v);
        out
    }

    #[test]
    fn skips_each_kind_of_datum_exactly() {
        let layout = Layout::parse(
            r#"{"type":"record","name":"a.b.R","fields":[
                {"name":"i","type":"long"},
                {"name":"s","type":"string"},
                {"name":"u","type":["null","double"]},
                {"name":"e","type":{"type":"enum","name":"E","symbols":["x","y"]}},
                {"name":"f","type":{"type":"fixed","name":"F","size":3}},
                {"name":"arr","type":{"type":"array","items":"float"}},
                {"name":"m","type":{"type":"map","values":"boolean"}},
                {"name":"again","type":["null","a.b.F"]},
                {"name":"next","type":["null","R"]}
            ]}"#,
        )
        .expect("schema");
        let mut d = Vec::new();
        d.extend(long(-5));
        d.extend(long(2));
        d.extend(b"hi");
        d.extend(long(1));
        d.extend(7.5f64.to_le_bytes());
        d.extend(long(1));
        d.extend(b"abc");
        d.extend(long(-2)); // an array block of 2 items with its byte size
        d.extend(long(8));
        d.extend([0u8; 8]);
        d.extend(long(0));
        d.extend(long(1));
        d.extend(long(1));
        d.extend(b"k");
        d.push(1);
        d.extend(long(0));
        d.extend(long(1));
        d.extend(b"xyz");
        d.extend(long(0)); // next: null
        let mut at = 0;
        layout.skip(&d, &mut at).expect("whole datum");
        assert_eq!(at, d.len());
        // Every prefix is cut short.
        for cut in 0..d.len() {
            let mut at = 0;
            assert!(layout.skip(&d[..cut], &mut at).is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn refuses_what_the_schema_does_not_allow() {
        let layout = Layout::parse(r#"["null","string"]"#).expect("schema");
        let mut at = 0;
        assert!(layout.skip(&long(2), &mut at).is_none(), "no third branch");
        let mut at = 0;
        let neg: Vec<u8> = [long(1), long(-3)].concat();
        assert!(layout.skip(&neg, &mut at).is_none(), "negative length");
        let nulls = Layout::parse(r#"{"type":"array","items":"null"}"#).expect("schema");
        let mut at = 0;
        let many: Vec<u8> = [long(1 << 40), long(0)].concat();
        assert!(nulls.skip(&many, &mut at).is_none(), "2^40 nulls");
        assert!(
            Layout::parse(r#"{"type":"record","name":"R","fields":[{"name":"x","type":"Nope"}]}"#)
                .is_err()
        );
    }
}
