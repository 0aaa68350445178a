//! The agent's vsock port serves the host only: a connection from inside the guest
//! (CID 1, through the vsock_loopback transport the image loads) is closed at once,
//! while the host's clients keep being served.

use std::time::Duration;

use vexfs_controller::client::AgentClient;
use vexfs_proto::ExecRequest;

use super::{boot, config, manifest, rt, serial};

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn vsock_connection_from_a_guest_cid_is_refused() {
    let _one = serial();
    let m = manifest(None);
    rt().block_on(async {
        let (vm, mut client, health, _) = boot(&config(&m)).await;
        let mods = client.list_modules().await.unwrap();
        assert!(
            mods.modules.iter().any(|md| md.name == "vsock_loopback"),
            "the image lacks vsock_loopback: rebuild it (scripts/setup.sh)\n{mods:?}"
        );
        let port = m.agent_port.to_string();
        let probe = client
            .exec(ExecRequest {
                argv: ["/init", "probe-vsock", "1", &port]
                    .map(String::from)
                    .to_vec(),
                timeout_ms: 30_000,
                ..Default::default()
            })
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&probe.stdout);
        let stderr = String::from_utf8_lossy(&probe.stderr);
        assert_eq!(
            (stdout.trim(), probe.exit_code),
            ("refused", 1),
            "probe stderr: {stderr}\n{}",
            vm.output_tail(30)
        );
        // The agent says why on its stderr, which is the serial console.
        let warned = vm
            .wait_for_console(Duration::from_secs(10), |l| {
                l.text.contains("refused vsock connection from CID 1")
            })
            .await
            .unwrap();
        assert!(
            warned.is_some(),
            "no refusal warning on the console\n{}",
            vm.output_tail(30)
        );
        // The host is still served: on the connection it had, and on a new one.
        let again = client.health().await.unwrap();
        assert_eq!(again.boot_id, health.boot_id);
        let addr = vm.agent_address().expect("vsock address").clone();
        let mut fresh = AgentClient::connect(&addr).await.unwrap();
        let fresh_health = fresh.health().await.unwrap();
        assert_eq!(
            fresh_health.agent_pid, health.agent_pid,
            "same agent, not a restart"
        );
        vm.kill();
    });
}
