//! Load: one controller supervising 32 real agents at once, each agent's kernel log
//! growing by 10,000 records a second. Every record must reach the controller exactly
//! once and in order, and no agent may be judged silent. Figures (CPU, RSS, rates) come
//! from the `load` benchmark; this test checks correctness under the load.

mod common;
#[path = "common/load.rs"]
mod load;

use std::time::Duration;

use load::Params;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_agents_at_ten_thousand_records_a_second() {
    let params = Params {
        agents: 32,
        rate: 10_000,
        duration: Duration::from_secs(10),
    };
    let out = load::run(params).await;
    eprint!("{}", out.report());
    let per_agent = params.records();

    // The scenario itself: the writers offered the load (not a timing target; below it
    // the test would prove nothing).
    assert!(
        out.min_write_rate() >= params.rate as f64,
        "this machine could not write {} records/s to each of {} agents (slowest {:.0}/s over {:.2} s): the load was not offered",
        params.rate,
        params.agents,
        out.min_write_rate(),
        out.write_elapsed.as_secs_f64()
    );
    for (i, a) in out.agents.iter().enumerate() {
        assert_eq!(a.written, per_agent, "agent {i}: writer fell short");
        // records == written, no step out of order, first 0 and last written-1: every
        // record arrived exactly once, in order.
        assert_eq!(
            a.stats.out_of_order, 0,
            "agent {i}: records out of order: {:?}",
            a.stats
        );
        assert_eq!(
            a.stats.lost, 0,
            "agent {i}: agent reported gaps: {:?}",
            a.stats
        );
        assert_eq!(
            a.stats.records, per_agent,
            "agent {i}: {} of {per_agent} records received ({:?})",
            a.stats.records, a.stats
        );
        assert_eq!(a.last_seq, Some(per_agent - 1), "agent {i}");
        assert!(
            a.verdicts.iter().all(|v| !v.is_failure()),
            "agent {i}: false failure verdicts under load: {:?} (longest heartbeat wait {:?})",
            a.verdicts,
            a.stats.max_heartbeat_gap
        );
        assert_eq!(
            a.final_verdict,
            vexfs_controller::verdict::Verdict::Healthy,
            "agent {i}"
        );
        assert!(
            a.stats.heartbeats >= params.duration.as_secs(),
            "agent {i}: {} heartbeats in a {:?} run",
            a.stats.heartbeats,
            params.duration
        );
    }
}
