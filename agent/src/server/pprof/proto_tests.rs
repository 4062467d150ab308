//! The encoder read back by a minimal protobuf reader: every stack, count,
//! label and name must come back as written.

use std::collections::HashMap;
use std::io::Read;

use super::super::profile::tests::example;
use super::*;

/// A field's value: varint, or length-delimited bytes.
#[derive(Debug, Clone)]
enum Value {
    Int(u64),
    Bytes(Vec<u8>),
}

/// Fields of one message, by number, in order.
#[derive(Debug, Default)]
struct Fields(HashMap<u32, Vec<Value>>);

fn varint(b: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = b[*at];
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return v;
        }
    }
    panic!("varint too long");
}

fn parse(b: &[u8]) -> Fields {
    let mut fields = Fields::default();
    let mut at = 0;
    while at < b.len() {
        let key = varint(b, &mut at);
        let value = match key & 7 {
            0 => Value::Int(varint(b, &mut at)),
            2 => {
                let len = varint(b, &mut at) as usize;
                at += len;
                Value::Bytes(b[at - len..at].to_vec())
            }
            w => panic!("unexpected wire type {w}"),
        };
        fields.0.entry((key >> 3) as u32).or_default().push(value);
    }
    fields
}

impl Fields {
    fn ints(&self, f: u32) -> Vec<u64> {
        self.0
            .get(&f)
            .into_iter()
            .flatten()
            .flat_map(|v| match v {
                Value::Int(i) => vec![*i],
                // Packed repeated integers.
                Value::Bytes(b) => {
                    let (mut at, mut out) = (0, Vec::new());
                    while at < b.len() {
                        out.push(varint(b, &mut at));
                    }
                    out
                }
            })
            .collect()
    }

    fn int(&self, f: u32) -> u64 {
        self.ints(f).first().copied().unwrap_or(0)
    }

    fn messages(&self, f: u32) -> Vec<Fields> {
        self.bytes(f).iter().map(|b| parse(b)).collect()
    }

    fn bytes(&self, f: u32) -> Vec<Vec<u8>> {
        self.0
            .get(&f)
            .into_iter()
            .flatten()
            .map(|v| match v {
                Value::Bytes(b) => b.clone(),
                Value::Int(_) => panic!("field {f} is not length-delimited"),
            })
            .collect()
    }
}

/// What a reader of the profile sees: stacks of (function, file, line), counts, labels.
type Stack = Vec<(String, String, u64)>;
type Labels = Vec<(String, String)>;

fn read_back(raw: &[u8]) -> (Vec<String>, Vec<(u64, Stack, Labels)>, Fields) {
    let p = parse(raw);
    let strings: Vec<String> = p
        .bytes(PROFILE_STRING_TABLE)
        .into_iter()
        .map(|b| String::from_utf8(b).unwrap())
        .collect();
    assert_eq!(strings[0], "", "string 0 must be empty");
    let s = |i: u64| strings[i as usize].clone();
    let functions: HashMap<u64, (String, String)> = p
        .messages(PROFILE_FUNCTION)
        .iter()
        .map(|f| {
            (
                f.int(FUNCTION_ID),
                (s(f.int(FUNCTION_NAME)), s(f.int(FUNCTION_FILENAME))),
            )
        })
        .collect();
    let locations: HashMap<u64, (String, String, u64)> = p
        .messages(PROFILE_LOCATION)
        .iter()
        .map(|l| {
            assert_eq!(l.int(LOCATION_MAPPING_ID), 1);
            assert_eq!(l.int(LOCATION_ADDRESS), l.int(LOCATION_ID));
            let line = &l.messages(LOCATION_LINE)[0];
            let (name, file) = functions[&line.int(LINE_FUNCTION_ID)].clone();
            (l.int(LOCATION_ID), (name, file, line.int(LINE_LINE)))
        })
        .collect();
    let samples = p
        .messages(PROFILE_SAMPLE)
        .iter()
        .map(|m| {
            let stack = m
                .ints(SAMPLE_LOCATION_ID)
                .iter()
                .map(|id| locations[id].clone())
                .collect();
            let labels = m
                .messages(SAMPLE_LABEL)
                .iter()
                .map(|l| (s(l.int(LABEL_KEY)), s(l.int(LABEL_STR))))
                .collect();
            (m.ints(SAMPLE_VALUE)[0], stack, labels)
        })
        .collect();
    (strings, samples, p)
}

#[test]
fn reads_back_what_was_written() {
    let profile = example();
    let (strings, samples, p) = read_back(&encode(&profile));
    let s = |i: u64| strings[i as usize].as_str();
    let types = p.messages(PROFILE_SAMPLE_TYPE);
    assert_eq!(types.len(), 1);
    assert_eq!(s(types[0].int(VALUE_TYPE_TYPE)), "goroutineleak");
    assert_eq!(s(types[0].int(VALUE_TYPE_UNIT)), "count");
    let period = &p.messages(PROFILE_PERIOD_TYPE)[0];
    assert_eq!(s(period.int(VALUE_TYPE_TYPE)), "goroutineleak");
    assert_eq!(p.int(PROFILE_PERIOD), 1);
    assert_eq!(p.int(PROFILE_TIME_NANOS) as i64, profile.time_nanos);
    assert_eq!(s(p.int(PROFILE_COMMENT)), "leaked goroutines");
    let mapping = &p.messages(PROFILE_MAPPING)[0];
    assert_eq!(s(mapping.int(MAPPING_FILENAME)), "demo");
    assert_eq!(mapping.int(MAPPING_HAS_FUNCTIONS), 1);
    assert_eq!(mapping.int(MAPPING_HAS_LINE_NUMBERS), 1);

    assert_eq!(samples.len(), profile.samples.len());
    for ((count, stack, labels), want) in samples.iter().zip(&profile.samples) {
        assert_eq!(*count, want.count);
        let want_stack: Stack = want
            .stack
            .iter()
            .map(|f| (f.function.clone(), f.file.clone(), u64::from(f.line)))
            .collect();
        assert_eq!(*stack, want_stack);
        let want_labels: Labels = want
            .labels
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect();
        assert_eq!(*labels, want_labels);
    }
    // Shared frames are written once, and so are their names.
    assert_eq!(p.messages(PROFILE_LOCATION).len(), 5);
    assert_eq!(p.messages(PROFILE_FUNCTION).len(), 5);
    assert_eq!(strings.iter().filter(|s| *s == "runtime.gopark").count(), 1);
}

#[test]
fn gzip_wraps_the_same_bytes() {
    let profile = example();
    let gz = gzipped(&profile);
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzip magic");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut raw)
        .unwrap();
    assert_eq!(raw, encode(&profile));
}

#[test]
fn empty_profile_still_names_its_type() {
    let mut profile = example();
    profile.samples.clear();
    profile.comments.clear();
    let (strings, samples, p) = read_back(&encode(&profile));
    assert!(samples.is_empty());
    assert_eq!(
        strings[p.messages(PROFILE_SAMPLE_TYPE)[0].int(VALUE_TYPE_TYPE) as usize],
        "goroutineleak"
    );
}

#[test]
fn varints_and_negative_times() {
    let mut m = Message::default();
    m.varint(300);
    assert_eq!(m.0, [0xac, 0x02]);
    let mut profile = example();
    profile.time_nanos = -1;
    let p = parse(&encode(&profile));
    assert_eq!(p.int(PROFILE_TIME_NANOS) as i64, -1);
}
