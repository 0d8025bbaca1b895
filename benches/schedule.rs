//! What a large handover costs a shard and the coordinator, with 1,000,000
//! devices: a shard's slots and schedule taking `k` devices out and `k` in
//! (as `Control::Devices` does between two rounds of due ticks, so it delays
//! that round by this much), a full rebuild for comparison (what a live
//! reload does), and the coordinator placing every device over `n`
//! instances by rendezvous hashing (what one membership change costs it).
//!
//! ```text
//! cargo bench --bench schedule -- [--devices N]
//! ```
//! Prints the median of 5 runs of each, in milliseconds.

use std::time::Instant;

use percore::devices::{stable_hash, Fleet};
use percore::placement::{Placement, Rendezvous};
use percore::record::{DeviceId, DeviceIndex};
use percore::shard::slots::Slots;
use percore::tick::{phase_ms, Schedule};

const PERIOD_MS: u64 = 60_000;

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn millis(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

fn main() {
    let mut devices = 1_000_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--bench" => {}
            "--devices" => {
                devices = args
                    .next()
                    .and_then(|value| value.parse().ok())
                    .unwrap_or_else(|| {
                        eprintln!("schedule: --devices needs a number");
                        std::process::exit(2)
                    })
            }
            other => {
                eprintln!("schedule: unknown flag {other}");
                std::process::exit(2);
            }
        }
    }
    let fleet = Fleet::generate(devices + devices / 2, &[(0, 1)]);
    let ids: Vec<DeviceId> = (0..fleet.len() as DeviceIndex)
        .map(|device| DeviceId::new(fleet.id(device)))
        .collect();
    let start_ms = 1_700_000_000_000i64;
    let periods = [PERIOD_MS];
    // A shard with `devices` devices, built as at start.
    let build = || {
        let mut slots = Slots::with_capacity(devices);
        for id in &ids[..devices] {
            let held = slots.insert(id.clone(), 0).expect("a new device");
            slots.schedule(held);
        }
        let entries: Vec<(usize, u64, u32)> = slots
            .scheduled()
            .map(|(slot, entry)| (0, phase_ms(stable_hash(&entry.id), PERIOD_MS), slot))
            .collect();
        let schedule = Schedule::new(&periods, entries.into_iter(), start_ms);
        (slots, schedule)
    };
    let mut rebuild = Vec::new();
    for _ in 0..5 {
        let (slots, _) = build();
        let began = Instant::now();
        let entries = slots
            .scheduled()
            .map(|(slot, entry)| (0, phase_ms(stable_hash(&entry.id), PERIOD_MS), slot));
        let schedule = Schedule::new(&periods, entries, start_ms + 1);
        rebuild.push(millis(began));
        std::hint::black_box(schedule);
    }
    println!(
        "{devices} devices: full schedule rebuild (a live reload) {:.1} ms",
        median(rebuild)
    );
    for moved in [1_000, 10_000, devices / 10, devices / 3] {
        let mut samples = Vec::new();
        for _ in 0..5 {
            let (mut slots, mut schedule) = build();
            let began = Instant::now();
            // As the shard applies Control::Devices: out by id, in by id, one
            // batched change of the schedule.
            let mut removed = Vec::with_capacity(moved);
            for id in &ids[..moved] {
                if let Some((slot, _)) = slots.remove(id) {
                    removed.push(slot);
                }
            }
            let mut added = Vec::with_capacity(moved);
            for id in &ids[devices..devices + moved.min(devices / 2)] {
                if let Some(held) = slots.insert(id.clone(), 0) {
                    slots.schedule(held);
                    added.push((0, phase_ms(stable_hash(id), PERIOD_MS), held.slot));
                }
            }
            schedule.change(&periods, &removed, &added, start_ms + 1);
            samples.push(millis(began));
            std::hint::black_box(&schedule);
        }
        println!(
            "{devices} devices: {moved} out and {} in on one shard {:.1} ms",
            moved.min(devices / 2),
            median(samples)
        );
    }
    for instances in [3usize, 10, 100] {
        let names: Vec<String> = (0..instances).map(|n| format!("host-{n:03}")).collect();
        let rendezvous = Rendezvous::new(names);
        let mut samples = Vec::new();
        for _ in 0..5 {
            let began = Instant::now();
            let mut mine = 0usize;
            for id in &ids[..devices] {
                if rendezvous.place(id, stable_hash(id)) == Some(0) {
                    mine += 1;
                }
            }
            samples.push(millis(began));
            std::hint::black_box(mine);
        }
        println!(
            "{devices} devices: placing each over {instances} instances (a membership change on the coordinator) {:.1} ms",
            median(samples)
        );
    }
}
