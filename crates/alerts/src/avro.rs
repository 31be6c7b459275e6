//! Avro alert packets into Arrow, with `arrow-avro` (the Avro reader of the Arrow project):
//! object container files (a schema in the header, then blocks of records), and Kafka
//! message values in the Confluent wire format (a zero byte, the writer schema's registry id
//! as a 4-byte big-endian integer, then one Avro record).

use std::io::Read;
use std::path::Path;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_avro::reader::ReaderBuilder;
use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};

use crate::{Error, Result};

/// Rows per Arrow batch when reading files.
const BATCH_ROWS: usize = 1024;

/// A compressed block that would grow beyond this is refused (a decompression bomb).
const MAX_BLOCK_BYTES: u64 = 1 << 30;

/// The bytes of file `path`, and its name for messages.
fn read_bytes(path: &Path) -> Result<(String, Vec<u8>)> {
    let name = path.display().to_string();
    let data = std::fs::read(path).map_err(|source| Error::Io {
        path: name.clone(),
        source,
    })?;
    Ok((name, data))
}

/// How a container file's blocks are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Null,
    Deflate,
    Snappy,
}

/// The framing of an Avro object container file: a header (magic, metadata, a 16-byte sync
/// marker), then blocks of a record count, a byte size, the (perhaps compressed) records and
/// the sync marker again.
struct Container<'a> {
    name: &'a str,
    data: &'a [u8],
    meta: Vec<(&'a [u8], &'a [u8])>,
    /// The header's length, through its sync marker.
    header_len: usize,
    /// Each block's record count and the byte range of its records.
    blocks: Vec<(usize, std::ops::Range<usize>)>,
}

impl<'a> Container<'a> {
    /// Walks the framing of `data` (named `name` in messages): a file cut short, or a block
    /// whose marker is wrong, is an error naming the byte offset.
    fn parse(name: &'a str, data: &'a [u8]) -> Result<Self> {
        let bad = |at: usize, what: &str| Error::Avro(format!("{name}: byte {at}: {what}"));
        if !data.starts_with(b"Obj\x01") {
            return Err(bad(0, "not an Avro object container file (no 'Obj' magic)"));
        }
        let mut at = 4;
        let mut meta = Vec::new();
        // The metadata: an Avro map, in blocks of a count then that many key/value pairs.
        loop {
            let count = read_long(data, &mut at).ok_or_else(|| bad(at, "header cut short"))?;
            if count == 0 {
                break;
            }
            if count < 0 {
                // A negative count is followed by the block's size in bytes.
                read_long(data, &mut at).ok_or_else(|| bad(at, "header cut short"))?;
            }
            for _ in 0..count.unsigned_abs() {
                let mut pair: [&[u8]; 2] = [&[], &[]];
                for part in &mut pair {
                    let len = read_long(data, &mut at)
                        .filter(|l| *l >= 0)
                        .ok_or_else(|| bad(at, "header cut short"))?;
                    let end = at
                        .checked_add(len as usize)
                        .filter(|e| *e <= data.len())
                        .ok_or_else(|| bad(at, "header cut short"))?;
                    *part = &data[at..end];
                    at = end;
                }
                meta.push((pair[0], pair[1]));
            }
        }
        let sync: [u8; 16] = data
            .get(at..at + 16)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| bad(at, "header cut short (no sync marker)"))?;
        at += 16;
        let header_len = at;
        let mut blocks = Vec::new();
        while at < data.len() {
            let start = at;
            let count = read_long(data, &mut at)
                .filter(|c| *c >= 0)
                .ok_or_else(|| bad(start, "block cut short (its record count)"))?;
            let size = read_long(data, &mut at)
                .filter(|s| *s >= 0)
                .ok_or_else(|| bad(start, "block cut short (its size)"))?;
            let end = at.saturating_add(size as usize);
            if end.saturating_add(16) > data.len() {
                return Err(bad(
                    start,
                    &format!(
                        "block of {count} records and {size} bytes cut short: the file ends \
                         at byte {}",
                        data.len()
                    ),
                ));
            }
            if data[end..end + 16] != sync {
                return Err(bad(end, "block does not end with the header's sync marker"));
            }
            blocks.push((count as usize, at..end));
            at = end + 16;
        }
        Ok(Self {
            name,
            data,
            meta,
            header_len,
            blocks,
        })
    }

    fn get(&self, key: &str) -> Option<&'a [u8]> {
        self.meta
            .iter()
            .find(|(k, _)| *k == key.as_bytes())
            .map(|(_, v)| *v)
    }

    /// The writer schema of the header, normalized ([`crate::schemas::normalize`]: Rubin's
    /// files name their records by full name, which `arrow-avro` does not resolve).
    fn schema(&self) -> Result<String> {
        let name = self.name;
        let json = self
            .get("avro.schema")
            .ok_or_else(|| Error::Avro(format!("{name}: no avro.schema in the file header")))?;
        let json = std::str::from_utf8(json)
            .map_err(|_| Error::Avro(format!("{name}: the header's schema is not UTF-8")))?;
        crate::schemas::normalize(json).map_err(|e| Error::Avro(format!("{name}: {e}")))
    }

    fn codec(&self) -> Result<Codec> {
        match self.get("avro.codec").unwrap_or(b"null") {
            b"null" => Ok(Codec::Null),
            b"deflate" => Ok(Codec::Deflate),
            b"snappy" => Ok(Codec::Snappy),
            other => Err(Error::Avro(format!(
                "{}: blocks compressed with '{}', which Meridian does not read (it reads \
                 null, deflate and snappy)",
                self.name,
                String::from_utf8_lossy(other)
            ))),
        }
    }

    /// The records' bytes of block `i`, decompressed.
    fn block_bytes(&self, codec: Codec, i: usize) -> Result<std::borrow::Cow<'a, [u8]>> {
        let range = self.blocks[i].1.clone();
        let raw = &self.data[range.clone()];
        let bad = |what: String| {
            Error::Avro(format!(
                "{}: block at byte {}: {what}",
                self.name, range.start
            ))
        };
        match codec {
            Codec::Null => Ok(raw.into()),
            Codec::Deflate => {
                let mut out = Vec::new();
                flate2::read::DeflateDecoder::new(raw)
                    .take(MAX_BLOCK_BYTES + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| bad(format!("deflate data cannot be read: {e}")))?;
                if out.len() as u64 > MAX_BLOCK_BYTES {
                    return Err(bad(format!(
                        "inflates to more than {MAX_BLOCK_BYTES} bytes"
                    )));
                }
                Ok(out.into())
            }
            Codec::Snappy => {
                // Snappy data, then the big-endian CRC-32 of the uncompressed bytes.
                let Some((body, crc)) = raw.split_last_chunk::<4>() else {
                    return Err(bad("snappy block shorter than its checksum".into()));
                };
                let len = snap::raw::decompress_len(body)
                    .map_err(|e| bad(format!("snappy data cannot be read: {e}")))?;
                if len as u64 > MAX_BLOCK_BYTES {
                    return Err(bad(format!(
                        "decompresses to {len} bytes, over {MAX_BLOCK_BYTES}"
                    )));
                }
                let out = snap::raw::Decoder::new()
                    .decompress_vec(body)
                    .map_err(|e| bad(format!("snappy data cannot be read: {e}")))?;
                let sum = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(&out);
                if sum != u32::from_be_bytes(*crc) {
                    return Err(bad("snappy checksum does not match its data".into()));
                }
                Ok(out.into())
            }
        }
    }
}

/// The alerts of an Avro object container file, as Arrow batches (one row per alert).
pub fn read_file(path: &Path) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let (name, data) = read_bytes(path)?;
    read_container(&name, &data)
}

/// Whether `data` starts as an Avro object container file does (`Obj` and version 1), as
/// ZTF's Kafka messages are, each holding its schema and one alert.
pub fn is_container(data: &[u8]) -> bool {
    data.starts_with(b"Obj\x01")
}

/// The alerts of the object container file `data` (named `name` in messages).
///
/// Each block is split into its records by the writer schema (`datum::Layout`) and must hold exactly
/// the records it declares; each record then goes to `arrow-avro`'s decoder, which must
/// take exactly its bytes.
pub fn read_container(name: &str, data: &[u8]) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let file = Container::parse(name, data)?;
    let codec = file.codec()?;
    let json = file.schema()?;
    let layout = crate::datum::Layout::parse(&json)
        .map_err(|e| Error::Avro(format!("{name}: the header's schema: {e}")))?;
    let mut decoder = decoder_sized(&[(0, json)], BATCH_ROWS)
        .map_err(|e| Error::Avro(format!("{name}: the header's schema: {e}")))?;
    let schema = decoder.schema();
    let mut batches = Vec::new();
    let mut rows = 0usize;
    let flush = |decoder: &mut arrow_avro::reader::Decoder,
                 batches: &mut Vec<RecordBatch>,
                 rows: usize|
     -> Result<()> {
        if let Some(b) = decoder
            .flush()
            .map_err(|e| Error::Avro(format!("{name}: the records before record {rows}: {e}")))?
        {
            batches.push(b);
        }
        Ok(())
    };
    for i in 0..file.blocks.len() {
        let (count, ref range) = file.blocks[i];
        let bytes = file.block_bytes(codec, i)?;
        let bad =
            |what: String| Error::Avro(format!("{name}: block at byte {}: {what}", range.start));
        let mut at = 0;
        for r in 0..count {
            let start = at;
            layout.skip(&bytes, &mut at).ok_or_else(|| {
                bad(format!(
                    "record {} of its {count} is cut short or does not follow the schema",
                    r + 1
                ))
            })?;
            let record = &bytes[start..at];
            // A zero schema id, then the record: the decoder's framing of one datum.
            let framed = decoder.decode(&[0; 5]).map_err(|e| bad(e.to_string()))?;
            let used = decoder.decode(record).map_err(|e| {
                bad(format!(
                    "record {} of its {count} cannot be read: {e}",
                    r + 1
                ))
            })?;
            if framed != 5 || used != record.len() {
                return Err(bad(format!(
                    "record {} of its {count}: {used} bytes decoded of {}",
                    r + 1,
                    record.len()
                )));
            }
            rows += 1;
            if decoder.batch_is_full() {
                flush(&mut decoder, &mut batches, rows)?;
            }
        }
        if at != bytes.len() {
            return Err(bad(format!(
                "{} bytes after its {count} records",
                bytes.len() - at
            )));
        }
    }
    flush(&mut decoder, &mut batches, rows)?;
    Ok((schema, batches))
}

/// The records an object container file declares in its blocks: a file cut short, or a
/// block whose marker is wrong, is an error naming the byte offset.
pub fn count_records(path: &Path) -> Result<usize> {
    let (name, data) = read_bytes(path)?;
    Ok(Container::parse(&name, &data)?
        .blocks
        .iter()
        .map(|(count, _)| count)
        .sum())
}

/// The records of an object container file whose blocks hold one uncompressed record each
/// (as Rubin's and ZTF's sample files, and Meridian's own, do): each the bytes of one Avro
/// datum, which a Kafka message carries after its Confluent header.
pub fn single_records<'a>(name: &str, data: &'a [u8]) -> Result<Vec<&'a [u8]>> {
    let file = Container::parse(name, data)?;
    if let Some(codec) = file.get("avro.codec").filter(|c| *c != b"null") {
        return Err(Error::Avro(format!(
            "{name}: blocks compressed with {}: records cannot be taken out one by one",
            String::from_utf8_lossy(codec)
        )));
    }
    file.blocks
        .into_iter()
        .map(|(count, range)| {
            if count == 1 {
                Ok(&data[range])
            } else {
                Err(Error::Avro(format!(
                    "{name}: a block of {count} records at byte {}: records cannot be taken out one by one",
                    range.start
                )))
            }
        })
        .collect()
}

/// One record of an object container file as a container of its own: the file's header
/// (schema, codec, sync marker), then one block holding the record (as ZTF publishes each
/// alert on Kafka).
pub fn single_record_container(name: &str, data: &[u8], record: &[u8]) -> Result<Vec<u8>> {
    let header_len = Container::parse(name, data)?.header_len;
    let sync = &data[header_len - 16..header_len];
    let mut out = Vec::with_capacity(header_len + record.len() + 36);
    out.extend_from_slice(&data[..header_len]);
    write_long(&mut out, 1);
    write_long(&mut out, record.len() as i64);
    out.extend_from_slice(record);
    out.extend_from_slice(sync);
    Ok(out)
}

/// An Avro `long` (zig-zag, variable length).
pub(crate) fn write_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// An Avro `long` (zig-zag, variable length) at `*at`, advancing past it.
pub(crate) fn read_long(data: &[u8], at: &mut usize) -> Option<i64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *data.get(*at)?;
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    None
}

/// The writer schema (JSON) in the header of an Avro object container file, normalized as
/// [`crate::schemas::normalize`] does.
pub fn file_schema(path: &Path) -> Result<String> {
    let (name, data) = read_bytes(path)?;
    Container::parse(&name, &data)?.schema()
}

/// Decodes Kafka message values in the Confluent wire format, one alert each, with the
/// writer schemas registered by id (as a schema registry serves them).
#[derive(Default)]
pub struct ConfluentDecoder {
    schemas: Vec<(u32, String)>,
    /// Built for the registered schemas; dropped after a message fails (its state is then
    /// unknown) and rebuilt for the next.
    decoder: Option<arrow_avro::reader::Decoder>,
    /// Where unknown ids are looked up.
    registry: Option<crate::schemas::Registry>,
}

impl std::fmt::Debug for ConfluentDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfluentDecoder")
            .field("schema_ids", &self.ids())
            .finish()
    }
}

fn decoder_for(schemas: &[(u32, String)]) -> Result<arrow_avro::reader::Decoder> {
    decoder_sized(schemas, 1)
}

fn decoder_sized(schemas: &[(u32, String)], rows: usize) -> Result<arrow_avro::reader::Decoder> {
    let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
    for (id, json) in schemas {
        store
            .set(Fingerprint::Id(*id), AvroSchema::new(json.clone()))
            .map_err(|e| Error::Avro(format!("schema {id}: {e}")))?;
    }
    ReaderBuilder::new()
        .with_batch_size(rows.max(1))
        .with_writer_schema_store(store)
        .build_decoder()
        .map_err(|e| Error::Avro(format!("schemas {:?}: {e}", ids_of(schemas))))
}

fn ids_of(schemas: &[(u32, String)]) -> Vec<u32> {
    schemas.iter().map(|(i, _)| *i).collect()
}

impl ConfluentDecoder {
    /// A decoder that knows no schema yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the writer schema (Avro JSON) that messages name by `id`; a schema that
    /// cannot be read is refused here, not at each message.
    pub fn register(&mut self, id: u32, schema_json: &str) -> Result<()> {
        let json = crate::schemas::normalize(schema_json)
            .map_err(|e| Error::Avro(format!("schema {id}: {e}")))?;
        decoder_for(&[(id, json.clone())])?;
        self.schemas.retain(|(i, _)| *i != id);
        self.schemas.push((id, json));
        self.decoder = None;
        Ok(())
    }

    /// Looks ids it does not know up in this schema registry.
    pub fn use_registry(&mut self, registry: crate::schemas::Registry) {
        self.registry = Some(registry);
    }

    /// The schema ids registered.
    pub fn ids(&self) -> Vec<u32> {
        ids_of(&self.schemas)
    }

    /// The schema id a message names, after checking its header.
    pub fn schema_id(value: &[u8]) -> Result<u32> {
        if value.len() < 5 {
            return Err(Error::Avro(format!(
                "message of {} bytes: the Confluent wire format needs a 5-byte header (magic \
                 byte 0, then a 4-byte schema id)",
                value.len()
            )));
        }
        if value[0] != 0 {
            return Err(Error::Avro(format!(
                "magic byte {:#04x}: not the Confluent wire format (which starts with 0x00)",
                value[0]
            )));
        }
        Ok(u32::from_be_bytes([value[1], value[2], value[3], value[4]]))
    }

    /// The alerts of several messages written with the same schema, as one batch (a row
    /// per message, in order): much cheaper than a batch per message. Each message must
    /// hold exactly one whole record; on any error nothing is returned, and
    /// [`Self::decode`] tells which message is at fault.
    pub fn decode_all(&mut self, values: &[&[u8]]) -> Result<RecordBatch> {
        let Some(first) = values.first() else {
            return Err(Error::Avro("no message to decode".into()));
        };
        let id = Self::schema_id(first)?;
        self.know(id)?;
        // A decoder of this one schema: building one for every schema known (a schema
        // directory holds a dozen Rubin versions) cost ~20 ms a batch.
        let schema: Vec<(u32, String)> = self
            .schemas
            .iter()
            .filter(|(i, _)| *i == id)
            .cloned()
            .collect();
        let mut decoder = decoder_sized(&schema, values.len())?;
        for (i, value) in values.iter().enumerate() {
            if Self::schema_id(value)? != id {
                return Err(Error::Avro(format!(
                    "message {i}: another schema than {id}"
                )));
            }
            let before = decoder.capacity();
            let used = decoder
                .decode(value)
                .map_err(|e| Error::Avro(format!("message with schema {id}: {e}")))?;
            if used != value.len() || decoder.capacity() + 1 != before {
                return Err(Error::Avro(format!(
                    "message with schema {id}: not exactly one whole record"
                )));
            }
        }
        let batch = decoder
            .flush()
            .map_err(|e| Error::Avro(format!("messages with schema {id}: {e}")))?
            .ok_or_else(|| Error::Avro(format!("messages with schema {id}: no record")))?;
        if batch.num_rows() != values.len() {
            return Err(Error::Avro(format!(
                "messages with schema {id}: {} records of {} messages",
                batch.num_rows(),
                values.len()
            )));
        }
        Ok(batch)
    }

    /// Makes sure schema `id` is known, asking the registry if there is one.
    fn know(&mut self, id: u32) -> Result<()> {
        if !self.schemas.iter().any(|(i, _)| *i == id) {
            match self.registry.as_mut().map(|r| r.fetch(id)) {
                None => {
                    return Err(Error::Avro(format!(
                        "unknown schema id {id} (known: {:?})",
                        self.ids()
                    )));
                }
                Some(Err(e)) => return Err(Error::Avro(format!("unknown schema id {id}: {e}"))),
                Some(Ok(json)) => {
                    self.register(id, &json)?;
                    tracing::info!(schema_id = id, "writer schema from the registry");
                }
            }
        }
        Ok(())
    }

    /// One message's alert as a one-row batch.
    pub fn decode(&mut self, value: &[u8]) -> Result<RecordBatch> {
        let id = Self::schema_id(value)?;
        self.know(id)?;
        let result = self.decode_known(id, value);
        if result.is_err() {
            self.decoder = None;
        }
        result
    }

    fn decode_known(&mut self, id: u32, value: &[u8]) -> Result<RecordBatch> {
        if self.decoder.is_none() {
            self.decoder = Some(decoder_for(&self.schemas)?);
        }
        let decoder = self.decoder.as_mut().expect("built above");
        let used = decoder
            .decode(value)
            .map_err(|e| Error::Avro(format!("message with schema {id}: {e}")))?;
        let batch = decoder
            .flush()
            .map_err(|e| Error::Avro(format!("message with schema {id}: {e}")))?
            .ok_or_else(|| {
                Error::Avro(format!(
                    "message with schema {id}: truncated ({} bytes, no whole record)",
                    value.len()
                ))
            })?;
        if used != value.len() {
            return Err(Error::Avro(format!(
                "message with schema {id}: {} bytes after the record",
                value.len() - used
            )));
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_headers_are_checked() {
        let e = ConfluentDecoder::schema_id(&[0, 0, 1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("5-byte header"), "{e}");
        let e = ConfluentDecoder::schema_id(&[0xc3, 1, 0, 0, 0, 0])
            .unwrap_err()
            .to_string();
        assert!(e.contains("magic byte 0xc3"), "{e}");
        assert_eq!(
            ConfluentDecoder::schema_id(&[0, 0, 0, 1, 2, 9]).unwrap(),
            258
        );
        let mut d = ConfluentDecoder::new();
        let e = d.decode(&[0, 0, 0, 0, 7, 1]).unwrap_err().to_string();
        assert!(e.contains("unknown schema id 7"), "{e}");
    }
}
