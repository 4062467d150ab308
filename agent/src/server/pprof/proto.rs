//! The `debug=0` encoding: pprof's `profile.proto`, gzipped, as the
//! runtime's `WriteTo(w, 0)` writes it. The schema is small enough to
//! write by hand (field numbers from `github.com/google/pprof/proto/
//! profile.proto`), which spares the agent a protobuf code generator.

use std::collections::HashMap;
use std::io::Write;

use flate2::{write::GzEncoder, Compression};

use super::profile::{CountProfile, Locations};

// Field numbers of profile.proto.
const PROFILE_SAMPLE_TYPE: u32 = 1;
const PROFILE_SAMPLE: u32 = 2;
const PROFILE_MAPPING: u32 = 3;
const PROFILE_LOCATION: u32 = 4;
const PROFILE_FUNCTION: u32 = 5;
const PROFILE_STRING_TABLE: u32 = 6;
const PROFILE_TIME_NANOS: u32 = 9;
const PROFILE_PERIOD_TYPE: u32 = 11;
const PROFILE_PERIOD: u32 = 12;
const PROFILE_COMMENT: u32 = 13;
const VALUE_TYPE_TYPE: u32 = 1;
const VALUE_TYPE_UNIT: u32 = 2;
const SAMPLE_LOCATION_ID: u32 = 1;
const SAMPLE_VALUE: u32 = 2;
const SAMPLE_LABEL: u32 = 3;
const LABEL_KEY: u32 = 1;
const LABEL_STR: u32 = 2;
const MAPPING_ID: u32 = 1;
const MAPPING_LIMIT: u32 = 3;
const MAPPING_FILENAME: u32 = 5;
const MAPPING_HAS_FUNCTIONS: u32 = 7;
const MAPPING_HAS_FILENAMES: u32 = 8;
const MAPPING_HAS_LINE_NUMBERS: u32 = 9;
const MAPPING_HAS_INLINE_FRAMES: u32 = 10;
const LOCATION_ID: u32 = 1;
const LOCATION_MAPPING_ID: u32 = 2;
const LOCATION_ADDRESS: u32 = 3;
const LOCATION_LINE: u32 = 4;
const LINE_FUNCTION_ID: u32 = 1;
const LINE_LINE: u32 = 2;
const FUNCTION_ID: u32 = 1;
const FUNCTION_NAME: u32 = 2;
const FUNCTION_SYSTEM_NAME: u32 = 3;
const FUNCTION_FILENAME: u32 = 4;

const VARINT: u32 = 0;
const LEN: u32 = 2;

/// The profile as pprof reads it: gzipped protobuf.
pub fn gzipped(profile: &CountProfile) -> Vec<u8> {
    let raw = encode(profile);
    let mut gz = GzEncoder::new(Vec::with_capacity(raw.len() / 2), Compression::default());
    // Writing to a Vec cannot fail.
    let _ = gz.write_all(&raw);
    gz.finish().unwrap_or_default()
}

/// The uncompressed protobuf message.
pub fn encode(profile: &CountProfile) -> Vec<u8> {
    let mut strings = Strings::default();
    let mut out = Message::default();
    let name = strings.id(profile.name);
    let count = strings.id("count");
    let value_type = Message::default()
        .int(VALUE_TYPE_TYPE, name)
        .int(VALUE_TYPE_UNIT, count);
    out = out.message(PROFILE_SAMPLE_TYPE, &value_type);

    let locations = Locations::of(profile);
    for (sample, stack) in profile.samples.iter().zip(&locations.stacks) {
        let mut m = Message::default()
            .packed(SAMPLE_LOCATION_ID, stack)
            .packed(SAMPLE_VALUE, &[sample.count]);
        for (key, value) in &sample.labels {
            let label = Message::default()
                .int(LABEL_KEY, strings.id(key))
                .int(LABEL_STR, strings.id(value));
            m = m.message(SAMPLE_LABEL, &label);
        }
        out = out.message(PROFILE_SAMPLE, &m);
    }

    // One mapping for every location, saying the frames are already named:
    // pprof then looks for no binary to symbolize them.
    let mapping = Message::default()
        .int(MAPPING_ID, 1)
        .int(MAPPING_LIMIT, locations.frames.len() as u64 + 1)
        .int(MAPPING_FILENAME, strings.id(&profile.binary))
        .int(MAPPING_HAS_FUNCTIONS, 1)
        .int(MAPPING_HAS_FILENAMES, 1)
        .int(MAPPING_HAS_LINE_NUMBERS, 1)
        .int(MAPPING_HAS_INLINE_FRAMES, 1);
    out = out.message(PROFILE_MAPPING, &mapping);

    let mut functions: HashMap<(&str, &str), u64> = HashMap::new();
    for (i, site) in locations.frames.iter().enumerate() {
        let id = i as u64 + 1;
        let next = functions.len() as u64 + 1;
        let function = *functions
            .entry((&site.function, &site.file))
            .or_insert(next);
        if function == next {
            let name = strings.id(&site.function);
            let f = Message::default()
                .int(FUNCTION_ID, function)
                .int(FUNCTION_NAME, name)
                .int(FUNCTION_SYSTEM_NAME, name)
                .int(FUNCTION_FILENAME, strings.id(&site.file));
            out = out.message(PROFILE_FUNCTION, &f);
        }
        let line = Message::default()
            .int(LINE_FUNCTION_ID, function)
            .int(LINE_LINE, u64::from(site.line));
        let location = Message::default()
            .int(LOCATION_ID, id)
            .int(LOCATION_MAPPING_ID, 1)
            .int(LOCATION_ADDRESS, id)
            .message(LOCATION_LINE, &line);
        out = out.message(PROFILE_LOCATION, &location);
    }

    let period_type = Message::default()
        .int(VALUE_TYPE_TYPE, name)
        .int(VALUE_TYPE_UNIT, count);
    out = out
        .message(PROFILE_PERIOD_TYPE, &period_type)
        .int(PROFILE_PERIOD, 1)
        .int(PROFILE_TIME_NANOS, profile.time_nanos as u64);
    for c in &profile.comments {
        out = out.int(PROFILE_COMMENT, strings.id(c));
    }
    for s in &strings.table {
        out = out.bytes(PROFILE_STRING_TABLE, s.as_bytes());
    }
    out.0
}

/// The string table: index 0 is always "".
struct Strings {
    table: Vec<String>,
    index: HashMap<String, u64>,
}

impl Default for Strings {
    fn default() -> Self {
        Self {
            table: vec![String::new()],
            index: HashMap::from([(String::new(), 0)]),
        }
    }
}

impl Strings {
    fn id(&mut self, s: &str) -> u64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as u64;
        self.table.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

/// A protobuf message being written, field by field.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u32) {
        self.varint(u64::from(field << 3 | wire));
    }

    /// An integer field; zero is the default and is left out.
    fn int(mut self, field: u32, v: u64) -> Self {
        if v != 0 {
            self.key(field, VARINT);
            self.varint(v);
        }
        self
    }

    fn bytes(mut self, field: u32, b: &[u8]) -> Self {
        self.key(field, LEN);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }

    fn message(self, field: u32, m: &Message) -> Self {
        self.bytes(field, &m.0)
    }

    /// A repeated integer field, packed.
    fn packed(self, field: u32, values: &[u64]) -> Self {
        let mut body = Message::default();
        for &v in values {
            body.varint(v);
        }
        self.bytes(field, &body.0)
    }
}

#[cfg(test)]
#[path = "proto_tests.rs"]
mod tests;
