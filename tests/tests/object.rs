//! What the compiled classifier object must look like beyond its map shapes. Unprivileged:
//! the object is only parsed, as `aya` would before loading it.

use std::collections::{BTreeSet, HashMap, HashSet};

use aya_obj::generated::{BPF_PSEUDO_MAP_FD, bpf_insn};
use classifier_common::names;

const BPF_LD_IMM64: u8 = 0x18;
const BPF_CALL: u8 = 0x85;
const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_CLASS: u8 = 0x07;
const BPF_JMP: u8 = 0x05;
const BPF_JMP32: u8 = 0x06;
const BPF_OP: u8 = 0xf0;
const BPF_JA: u8 = 0x00;
const BPF_EXIT: u8 = 0x90;
/// Classes whose instructions write their destination register.
const WRITES_DST: [u8; 4] = [0x00, 0x01, 0x04, 0x07];

/// The map (by the fake fd `relocate_maps` wrote) each `bpf_map_lookup_elem` call of
/// `insns` is bound to, or `None` for a call that another path can reach with another `r1`.
fn lookup_sites(insns: &[bpf_insn]) -> Vec<(usize, Option<i32>)> {
    // `ld_imm64` takes two slots; its second half is not an instruction of its own.
    let mut starts = Vec::new();
    let mut index = 0;
    while index < insns.len() {
        starts.push(index);
        index += if insns[index].code == BPF_LD_IMM64 {
            2
        } else {
            1
        };
    }
    let mut targets = HashSet::new();
    for &i in &starts {
        let insn = &insns[i];
        let class = insn.code & BPF_CLASS;
        let op = insn.code & BPF_OP;
        if (class == BPF_JMP || class == BPF_JMP32) && insn.code != BPF_CALL && op != BPF_EXIT {
            // `gotol` (JMP32 JA) keeps its offset in `imm`.
            let offset = if class == BPF_JMP32 && op == BPF_JA {
                i64::from(insn.imm)
            } else {
                i64::from(insn.off)
            };
            targets.insert(i64::try_from(i).unwrap() + 1 + offset);
        }
    }
    let is_target = |i: usize| targets.contains(&i64::try_from(i).unwrap());
    let mut sites = Vec::new();
    for (n, &call) in starts.iter().enumerate() {
        let insn = &insns[call];
        if insn.code != BPF_CALL || insn.src_reg() != 0 || insn.imm != BPF_FUNC_MAP_LOOKUP_ELEM {
            continue;
        }
        // Walk back to what set r1, in straight-line code only: a jump landing between there
        // and the call (or on the call) brings another r1.
        let mut map = None;
        let mut next = call;
        for &i in starts[..n].iter().rev() {
            let before = &insns[i];
            if is_target(next) || before.code == BPF_CALL {
                break;
            }
            if WRITES_DST.contains(&(before.code & BPF_CLASS)) && before.dst_reg() == 1 {
                if before.code == BPF_LD_IMM64 && u32::from(before.src_reg()) == BPF_PSEUDO_MAP_FD {
                    map = Some(before.imm);
                }
                break;
            }
            next = i;
        }
        sites.push((call, map));
    }
    sites
}

/// Each `bpf_map_lookup_elem` call of the programs sees exactly one map. The verifier then
/// replaces the generic helper with a direct call to that map's own lookup (and inlines array
/// lookups); a call that two maps reach (LLVM merging the IPv4 and IPv6 trie lookups into one)
/// keeps the generic helper and its indirect call: 12-15 ns more per packet, measured with
/// `cargo xtask bench` on the real feed.
#[test]
fn every_map_lookup_call_sees_one_map() {
    let mut object =
        aya_obj::Object::parse(classifier_user::EBPF_OBJECT).expect("the embedded object parses");
    let maps: Vec<(String, aya_obj::Map)> = object
        .maps
        .iter()
        .map(|(name, map)| (name.clone(), map.clone()))
        .collect();
    // Fake descriptors, one per map, stand for the maps in the relocated instructions.
    let fds: HashMap<i32, &str> = (1000..)
        .zip(maps.iter().map(|(name, _)| name.as_str()))
        .collect();
    object
        .relocate_maps(
            (1000..)
                .zip(&maps)
                .map(|(fd, (name, map))| (name.as_str(), fd, map)),
            &HashSet::new(),
        )
        .expect("map relocations");
    for program in [
        names::XDP_PROGRAM,
        names::TC_PROGRAM,
        names::TC_ONLY_PROGRAM,
    ] {
        let section = &object.programs[program];
        let function = &object.functions[&(section.section_index, section.address)];
        let sites = lookup_sites(&function.instructions);
        let tries: BTreeSet<&str> = sites
            .iter()
            .filter_map(|(_, map)| map.and_then(|fd| fds.get(&fd).copied()))
            .collect();
        for (call, map) in &sites {
            assert!(
                map.is_some(),
                "{program}: the lookup at instruction {call} can be reached with more than one map"
            );
        }
        for trie in [names::PREFIX_V4, names::PREFIX_V6] {
            assert!(tries.contains(trie), "{program}: no lookup of {trie}");
        }
    }
}
