//! Every metric name the agent serves, in one place (counters without
//! their `_total`, which the encoder adds).

pub const BUILD_INFO: &str = "gostray_build_info";
pub const GOROUTINES: &str = "gostray_goroutines";
pub const CREATED: &str = "gostray_goroutines_created";
pub const EXITED: &str = "gostray_goroutines_exited";
pub const UNTRACKED: &str = "gostray_goroutines_untracked";
pub const LOST: &str = "gostray_events_lost";
pub const ATTACHED: &str = "gostray_attached_processes";
pub const ATTACHED_BINARIES: &str = "gostray_attached_binaries";
pub const PROBE_ERRORS: &str = "gostray_probe_errors";
pub const ATTACH_FAILURES: &str = "gostray_attach_failures";
pub const STRAY_EVENTS: &str = "gostray_stray_events";
pub const WATCHED: &str = "gostray_watched_processes";
pub const ATTACHES: &str = "gostray_attaches";
pub const PROCESS_INFO: &str = "gostray_process_info";
pub const SKIPPED: &str = "gostray_processes_skipped";
pub const PROC_EVENTS_LOST: &str = "gostray_process_events_lost";
pub const SCANS: &str = "gostray_discovery_scans";
pub const SCAN_SECONDS: &str = "gostray_discovery_scan_seconds";
pub const TABLE_ENTRIES: &str = "gostray_table_entries";
pub const SERIES: &str = "gostray_series";
pub const SERIES_FOLDED: &str = "gostray_series_folded";
pub const KUBE_PODS: &str = "gostray_kube_pods_cached";
pub const KUBE_CONTAINERS: &str = "gostray_kube_containers_cached";
pub const KUBE_SYNCED: &str = "gostray_kube_synced";
pub const KUBE_WATCH_ERRORS: &str = "gostray_kube_watch_errors";
pub const KUBE_API_ERRORS: &str = "gostray_kube_api_errors";

// The leak detector's families.
pub const LEAKED: &str = "gostray_leaked_goroutines";
pub const SUSPECT: &str = "gostray_suspect_goroutines";
pub const BLOCKED_SENDERS: &str = "gostray_blocked_senders";
pub const BLOCKED: &str = "gostray_goroutines_blocked";
pub const RECONCILED: &str = "gostray_goroutines_reconciled";
pub const DOUBLE_CLOSES: &str = "gostray_channel_double_closes";
pub const SENDS_ON_CLOSED: &str = "gostray_channel_sends_on_closed";
pub const NIL_CLOSES: &str = "gostray_channel_nil_closes";
pub const LIFETIME: &str = "gostray_goroutine_lifetime_seconds";
pub const TABLE_SCANS: &str = "gostray_goroutine_scans";
pub const TABLE_SCAN_SECONDS: &str = "gostray_goroutine_scan_seconds";
pub const LAYOUT_GUESSED: &str = "gostray_binaries_layout_guessed";
pub const HEAP_WALKS: &str = "gostray_heap_walks";
pub const HEAP_WALK_SECONDS: &str = "gostray_heap_walk_seconds";
pub const DEATHS: &str = "gostray_process_deaths";
pub const DEATHS_UNRECORDED: &str = "gostray_process_deaths_unrecorded";
pub const FATAL_HITS: &str = "gostray_fatal_probe_hits";
pub const HEAP_WALK_BYTES: &str = "gostray_heap_walk_read_bytes";

// The overhead budget's families.
pub const PROBE_GROUP_ACTIVE: &str = "gostray_probe_group_active";
pub const PROBE_COST_RATIO: &str = "gostray_probe_cost_ratio";
pub const PROBE_GROUP_DETACHES: &str = "gostray_probe_group_detaches";
pub const PROBE_HIT_COST: &str = "gostray_probe_hit_cost_seconds";
pub const OVERHEAD_BUDGET: &str = "gostray_overhead_budget_ratio";
