//! The ledger check itself: it must catch what it is there to catch.

use crate::cluster::{check_ledger, parse_ledger};

#[test]
fn the_ledger_check_catches_overlaps_and_epochs_going_back() {
    let ok = "a 1 10 100\na 1 10 200\nb 2 20 300\nb 2 20 400\na 3 30 500\n";
    let h = parse_ledger(ok).unwrap();
    assert_eq!(h.len(), 3);
    check_ledger(&h).unwrap();
    // b starts before a's last record: both ran at once.
    let twice = "a 1 10 100\nb 2 20 150\na 1 10 200\n";
    assert!(check_ledger(&parse_ledger(twice).unwrap()).unwrap_err().contains("S1"));
    // Twice on one member counts too.
    let local = "a 1 10 100\na 1 11 150\na 1 10 200\n";
    assert!(check_ledger(&parse_ledger(local).unwrap()).is_err());
    // A move without a new epoch, and an epoch going back.
    assert!(check_ledger(&parse_ledger("a 1 10 100\nb 1 20 200\n").unwrap()).unwrap_err().contains("epoch"));
    assert!(check_ledger(&parse_ledger("a 2 10 100\na 1 11 200\n").unwrap()).unwrap_err().contains("epoch"));
    // Same member, same epoch again (a local restart) is fine.
    check_ledger(&parse_ledger("a 1 10 100\na 1 11 200\n").unwrap()).unwrap();
    assert!(parse_ledger("a 1 10\n").is_err(), "a torn record");
}
