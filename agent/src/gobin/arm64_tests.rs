use super::*;

#[test]
fn dump() {
    let path = std::env::var("DUMP").unwrap_or_default();
    if path.is_empty() { return; }
    let data = std::fs::read(&path).unwrap();
    let bin = crate::gobin::GoBinary::parse(&data);
    eprintln!("{:?}", bin.as_ref().err());
}
