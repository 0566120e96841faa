#[test]
fn verifier_log() {
    use aya::{EbpfLoader, VerifierLogLevel, programs::Xdp};
    let mut ebpf = EbpfLoader::new()
        .verifier_log_level(VerifierLogLevel::VERBOSE | VerifierLogLevel::STATS)
        .load(classifier_user::EBPF_OBJECT)
        .unwrap();
    let prog: &mut Xdp = ebpf.program_mut("breakout").unwrap().try_into().unwrap();
    if let Err(e) = prog.load() {
        let s = format!("{e:?}");
        std::fs::write("/tmp/verifier.log", s.replace("\\n", "\n")).unwrap();
        panic!("failed");
    }
}
