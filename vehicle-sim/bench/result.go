package bench

// Result is one run of a scenario against one system under test. Fields a run does not
// measure are left out of the JSON (memory without processes to measure, latency at QoS 0).
type Result struct {
	Scenario  string  `json:"scenario"`
	Broker    string  `json:"broker"`
	Round     int     `json:"round"`
	Cars      int     `json:"cars"`
	DurationS float64 `json:"duration_s"` // connect: time until all were connected; telemetry: the publishing window

	Connected     int64   `json:"connected"`
	ConnectFailed int64   `json:"connect_failed"`
	Refused       int64   `json:"refused"`
	ConnectS      float64 `json:"connect_s"`
	ConnectPerS   float64 `json:"connect_per_s"`

	BrokerKBPerCar       *float64 `json:"broker_kb_per_car,omitempty"`
	BrokerSlopeKBPerCar  *float64 `json:"broker_slope_kb_per_car,omitempty"`
	GatewayKBPerCar      *float64 `json:"gateway_kb_per_car,omitempty"`
	GatewaySlopeKBPerCar *float64 `json:"gateway_slope_kb_per_car,omitempty"`
	// The same at the end of a run with telemetry: the memory of cars that talk, not of idle
	// sessions (a garbage-collected heap grows to twice what is live between collections).
	BrokerKBPerCarEnd  *float64 `json:"broker_kb_per_car_end,omitempty"`
	GatewayKBPerCarEnd *float64 `json:"gateway_kb_per_car_end,omitempty"`

	RatePerCar  float64 `json:"rate_per_car"` // telemetry messages/s per car; -1: as fast as taken
	QoS         int     `json:"qos"`
	Sent        int64   `json:"sent"`
	Acked       int64   `json:"acked"`
	Received    int64   `json:"received"` // telemetry the gateway's twin took during the run
	SentPerS    float64 `json:"sent_per_s"`
	MsgsPerS    float64 `json:"msgs_per_s"` // into the twin, during the publishing window
	Lost        int64   `json:"lost"`       // sent (QoS 0) or acknowledged (QoS 1), never received
	GatewayLost int64   `json:"gateway_lost"`
	// ReceivedAfterWindow is what the twin took after the publishing window closed, while the
	// bench waited for the messages still queued (broker, gateway workers): it is why
	// msgs_per_s is below sent_per_s with nothing lost.
	ReceivedAfterWindow int64 `json:"received_after_window"`

	// What p50…max measure: connect (dial to CONNACK), puback, or a digital-key scenario's
	// round trip (see KeyResult). p90 and p99.9 only for the digital-key scenarios.
	Latency string   `json:"latency,omitempty"`
	P50Ms   *float64 `json:"p50_ms,omitempty"`
	P90Ms   *float64 `json:"p90_ms,omitempty"`
	P99Ms   *float64 `json:"p99_ms,omitempty"`
	P999Ms  *float64 `json:"p999_ms,omitempty"`
	MaxMs   *float64 `json:"max_ms,omitempty"`

	Errors         int64            `json:"errors"`
	ErrorsByReason map[string]int64 `json:"errors_by_reason,omitempty"` // digital-key scenarios
	FirstError     string           `json:"first_error,omitempty"`

	*KeyResult // commands, revoke, local

	// HostLoad is the 1-minute load average at the start and the end of the run: on a shared
	// machine, other work competes with both sides.
	HostLoad [2]float64 `json:"host_load"`

	// OpUnit is what the processes' per-operation figures count: connect (a car connected),
	// message (into the twin), command (executed), revocation.
	OpUnit       string       `json:"op_unit,omitempty"`
	Processes    []ProcResult `json:"processes,omitempty"`
	LoaderCPUPct float64      `json:"loader_cpu_pct"`
	LoadProcs    int          `json:"load_procs"`
	Steps        []StepResult `json:"steps,omitempty"`
}

// KeyResult is what the digital-key scenarios measure beyond the common fields. Their p50…max
// are the round trip of an executed command (commands: the phone's Send until the executed
// reply; local: challenge and command until the car's answer) or, for revoke, a car's time
// from its owner's revoke request to the gateway's record of the car's acknowledgement;
// duration_s is the sending window, or for revoke the time from the first revoke request to
// the last acknowledgement.
type KeyResult struct {
	Owners int `json:"owners"` // the cars' owners: one per car, or --owners (round-robin)
	// SetupS is provisioning, cars online, owners set up (user, login, TOTP enrollment,
	// pairing) and, for commands, the step-ups; not part of any figure.
	SetupS float64 `json:"setup_s"`

	RateTarget       float64   `json:"rate_target,omitempty"` // commands/s requested over all cars
	Actions          []string  `json:"actions,omitempty"`     // each car's owner cycles through these
	StepUps          int       `json:"step_ups,omitempty"`    // TOTP-authorized commands that elevated the owners' sessions
	Commands         int64     `json:"commands,omitempty"`    // sent during the window
	Accepted         int64     `json:"accepted,omitempty"`    // accepted replies: each decision was in the audit log before the command went out
	Executed         int64     `json:"executed,omitempty"`
	CommandsPerS     float64   `json:"commands_per_s,omitempty"`
	ExecutedPerS     float64   `json:"executed_per_s,omitempty"`
	DispatchLagP99Ms *float64  `json:"dispatch_lag_p99_ms,omitempty"` // how late the bench sent against its schedule
	Split            []Segment `json:"split,omitempty"`               // commands: where the time of an executed command goes
	LinkAddr         string    `json:"link_addr,omitempty"`
	// local: a challenge alone (new connection, no signature check, no commit), probed every
	// 20 ms during the window.
	ChallengeP50Ms *float64 `json:"challenge_p50_ms,omitempty"`
	ChallengeP99Ms *float64 `json:"challenge_p99_ms,omitempty"`

	Revoked            int      `json:"revoked,omitempty"`           // revocations the gateway answered
	AckedCars          int      `json:"cars_acked,omitempty"`        // cars that acknowledged the revoking whitelist
	RevokeAnsweredS    float64  `json:"revoke_answered_s,omitempty"` // first request to the last answer
	AllAckedObservedS  float64  `json:"all_acked_observed_s,omitempty"`
	RevokeRequestP50Ms *float64 `json:"revoke_request_p50_ms,omitempty"` // POST /v1/keys/revoke round trip
	RevokeRequestP99Ms *float64 `json:"revoke_request_p99_ms,omitempty"`
	RetriedWithTOTP    int      `json:"retried_with_totp,omitempty"` // revocations whose step-up had lapsed
}

// Segment is one part of a command's round trip, from the replies' millisecond timestamps
// and the phone's clock (one machine): the mean over executed commands, and percentiles that
// are good to ±0.5 ms.
type Segment struct {
	Name   string  `json:"segment"`
	MeanMs float64 `json:"mean_ms"`
	P50Ms  float64 `json:"p50_ms"`
	P99Ms  float64 `json:"p99_ms"`
}

// ProcResult is what one process of the system under test used.
type ProcResult struct {
	Role        string   `json:"role"`
	PID         int      `json:"pid"`
	RSSKBBase   int64    `json:"rss_kb_base"` // after provisioning, before any car connected
	RSSKB       int64    `json:"rss_kb"`      // at the end of the run, cars still connected
	AnonKB      int64    `json:"rss_anon_kb"`
	HWMKB       int64    `json:"rss_kb_max"`
	KBPerCar    *float64 `json:"kb_per_car,omitempty"`     // after connecting, at rest
	KBPerCarEnd *float64 `json:"kb_per_car_end,omitempty"` // at the end, after telemetry
	SlopeKB     *float64 `json:"slope_kb_per_car,omitempty"`
	CPUPct      float64  `json:"cpu_pct"`                  // during the measured phase, % of one core
	CPUUsPerMsg *float64 `json:"cpu_us_per_msg,omitempty"` // telemetry: CPU per message into the twin

	// Per operation of the measured phase (Result.OpUnit; connect: the connect steps with their
	// settles, telemetry: the publishing window): context switches summed over the
	// threads (/proc/PID/task/*/status), fsync and fdatasync calls (perf's system-call
	// tracepoints), CPU (utime+stime), and objects allocated (the Go runtime's Mallocs; Go
	// processes serving the gateway's profiles only).
	CtxSwitchesPerOp *float64 `json:"ctx_switches_per_op,omitempty"`
	FsyncsPerOp      *float64 `json:"fsyncs_per_op,omitempty"`
	CPUUsPerOp       *float64 `json:"cpu_us_per_op,omitempty"`
	AllocsPerOp      *float64 `json:"allocs_per_op,omitempty"`
	// With the cars connected and quiet (connect: after the last step; commands: before the
	// window).
	IdleCtxSwitchesPerS *float64 `json:"idle_ctx_switches_per_s,omitempty"`
	IdleCPUPct          *float64 `json:"idle_cpu_pct,omitempty"`
	// Per connected car, from the Go runtime after a collection (connect and telemetry, the
	// gateway's process): heap in use, goroutine stacks, goroutines.
	HeapKBPerCar     *float64 `json:"heap_kb_per_car,omitempty"`
	StackKBPerCar    *float64 `json:"stack_kb_per_car,omitempty"`
	GoroutinesPerCar *float64 `json:"goroutines_per_car,omitempty"`
}

// StepResult is the state after one connect step.
type StepResult struct {
	Connected int64            `json:"connected"`
	ConnectS  float64          `json:"connect_s"`
	RSSKB     map[string]int64 `json:"rss_kb"`
}
