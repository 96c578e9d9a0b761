// Package drill is the outage drill, `gateway drill outage`: a fleet whose owners enrolled TOTP
// and paired phone keys loses its cloud (gateway and broker), and every owner must still open
// their car over the local link while revoked and foreign keys must not; the cars' journals
// must reach the audit log once the cloud is back. The system is started by gateway/harness.
package drill

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/harness"
	"telematics/pkg/api"
	"telematics/pkg/cmdline"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// Options configure an outage drill.
type Options struct {
	Cars int
	// Dir keeps the drill's data; "" means a temporary directory removed at the end.
	Dir string
	// Progress receives a line per phase; nil discards.
	Progress io.Writer
	Logger   *slog.Logger
	// CloudTimeout is how long a phone waits for the cloud before it uses the local link.
	CloudTimeout time.Duration
}

// PathStats are the attempts over one path.
type PathStats struct {
	Attempts  int     `json:"attempts"`
	Successes int     `json:"successes"`
	P50Ms     float64 `json:"p50_ms"`
	P99Ms     float64 `json:"p99_ms"`
	MaxMs     float64 `json:"max_ms"`
	lat       []time.Duration
}

func (p *PathStats) add(d time.Duration, ok bool) {
	p.Attempts++
	if ok {
		p.Successes++
	}
	p.lat = append(p.lat, d)
}

func (p *PathStats) finish() {
	if len(p.lat) == 0 {
		return
	}
	sort.Slice(p.lat, func(i, j int) bool { return p.lat[i] < p.lat[j] })
	at := func(q float64) float64 {
		i := int(q * float64(len(p.lat)-1))
		return float64(p.lat[i].Microseconds()) / 1000
	}
	p.P50Ms, p.P99Ms, p.MaxMs = at(0.5), at(0.99), at(1)
}

// Report is what the drill found.
type Report struct {
	OK   bool `json:"ok"`
	Cars int  `json:"cars"`
	// Paths: "cloud" (owners' TOTP unlocks before the outage), "local" (owners' unlocks during
	// the outage, through the fallback: from the tap to the car's answer, so the time the phone
	// waited for the cloud to fail is part of it).
	Paths map[string]*PathStats `json:"paths"`
	// Fallback splits the "local" path's latency in two: CloudWait, the time each phone spent
	// on the cloud before it gave up (about CloudTimeoutMs: the broker is down), and Link, the
	// local link's own exchange (challenge and command) after that.
	Fallback struct {
		CloudWait PathStats `json:"cloud_wait"`
		Link      PathStats `json:"local_link"`
	} `json:"fallback"`
	CloudTimeoutMs int64 `json:"cloud_timeout_ms"`
	// LegitimateFailed counts owners' unlocks that did not execute; IllegitimateSucceeded
	// counts revoked or foreign keys that opened a car. Both must be 0.
	LegitimateFailed      int `json:"legitimate_failed"`
	IllegitimateAttempts  int `json:"illegitimate_attempts"`
	IllegitimateSucceeded int `json:"illegitimate_succeeded"`
	// Refusals counts the cars' reasons for the illegitimate attempts.
	Refusals map[string]int `json:"refusals"`
	// JournalExpected is how many local-link decisions the cars made during the outage;
	// JournalFiled how many reached the gateway's audit log after the cloud came back.
	JournalExpected int      `json:"journal_expected"`
	JournalFiled    int      `json:"journal_filed"`
	Problems        []string `json:"problems,omitempty"`
	DurationMs      int64    `json:"duration_ms"`
}

// Run runs the drill: a fleet whose owners enrolled TOTP and paired phone keys (and, for every
// third car, a friend whose shared key the owner revoked); one cloud unlock per owner; the
// cloud goes down (gateway and broker); every owner unlocks through the fallback; revoked and
// foreign keys try the local link; the cloud comes back and the cars' journals must arrive.
func Run(ctx context.Context, o Options) Report {
	start := time.Now()
	rep := Report{Cars: o.Cars, Paths: map[string]*PathStats{"cloud": {}, "local": {}}, Refusals: map[string]int{}}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.CloudTimeout <= 0 {
		o.CloudTimeout = time.Second
	}
	rep.CloudTimeoutMs = o.CloudTimeout.Milliseconds()
	say := func(format string, args ...any) { fmt.Fprintf(o.Progress, format+"\n", args...) }
	fail := func(format string, args ...any) Report {
		rep.Problems = append(rep.Problems, fmt.Sprintf(format, args...))
		rep.DurationMs = time.Since(start).Milliseconds()
		rep.OK = false
		return rep
	}
	dir := o.Dir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "drill-")
		if err != nil {
			return fail("temporary directory: %v", err)
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}

	cloud, err := harness.NewCloud(harness.Options{Dir: filepath.Join(dir, "gateway"), Logger: o.Logger.With("component", "gateway"),
		Configure: harness.ManyPeople, TLS: true})
	if err != nil {
		return fail("%v", err)
	}
	if err := cloud.Up(ctx); err != nil {
		return fail("start the cloud: %v", err)
	}
	defer cloud.Down()
	creds, err := cloud.Provision(ctx, o.Cars)
	if err != nil {
		return fail("provision: %v", err)
	}
	trust, err := cloud.ClientTLS()
	if err != nil {
		return fail("the cloud's CA: %v", err)
	}
	fleet, err := harness.StartFleet(ctx, harness.FleetOptions{Dir: filepath.Join(dir, "sim"), BrokerURL: cloud.BrokerURL(), TLS: trust, Creds: creds,
		Logger: o.Logger.With("component", "fleet")})
	if err != nil {
		return fail("start the fleet: %v", err)
	}
	defer fleet.Stop()
	vins := make([]string, len(creds))
	for i, c := range creds {
		vins[i] = c.VIN
	}
	if err := cloud.WaitOnline(ctx, 30*time.Second, vins...); err != nil {
		return fail("cars online: %v", err)
	}
	say("%s online; local link on %s", cmdline.Plural(len(creds), "car"), fleet.Link.Addr())

	// Owners (and every third car's friend) set up in parallel, as many people would.
	owners := make([]*harness.Person, len(creds))
	friends := make([]*harness.Person, len(creds))
	revoked := make([]bool, len(creds))
	var setupErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range creds {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := setUp(ctx, cloud, creds[i].VIN, i, owners, friends, revoked); err != nil {
				mu.Lock()
				if setupErr == nil {
					setupErr = err
				}
				mu.Unlock()
			}
		}(i)
	}
	wg.Wait()
	if setupErr != nil {
		return fail("set up owners: %v", setupErr)
	}
	if err := cloud.WaitSynced(ctx, 30*time.Second, vins...); err != nil {
		return fail("whitelists acknowledged: %v", err)
	}
	nRevoked := 0
	for _, r := range revoked {
		if r {
			nRevoked++
		}
	}
	say("%s enrolled TOTP and paired their phones; %s revoked; every car acknowledged its whitelist",
		cmdline.Plural(len(owners), "owner"), cmdline.Plural(nRevoked, "shared key"))

	// One TOTP-authorized cloud unlock per owner, before the outage.
	for i, p := range owners {
		code, err := p.Code()
		if err != nil {
			return fail("%v", err)
		}
		t0 := time.Now()
		out, err := phone.SendAuto(ctx, phone.AutoOptions{Session: p.Session, Key: p.Key, LinkAddr: fleet.Link.Addr(),
			CloudTimeout: 5 * time.Second, CloudOnly: true}, phone.Request{VIN: creds[i].VIN, Action: protocol.ActionUnlock, TOTP: code}, nil)
		ok := err == nil && out.Reply.Status == protocol.ReplyExecuted
		rep.Paths["cloud"].add(time.Since(t0), ok)
		if !ok {
			rep.LegitimateFailed++
			rep.Problems = append(rep.Problems, fmt.Sprintf("cloud unlock of %s by %s: %v %s %s", creds[i].VIN, p.Name, err, out.Reply.Status, out.Reply.Reason))
		}
	}
	say("cloud path: %d/%d owners unlocked with TOTP", rep.Paths["cloud"].Successes, len(owners))

	if err := cloud.Down(); err != nil {
		return fail("take the cloud down: %v", err)
	}
	say("the cloud is down: gateway and broker stopped")

	// Every owner unlocks at about the same time: each phone tries the cloud, gets nothing,
	// and uses the local link.
	type result struct {
		i   int
		d   time.Duration
		out phone.Outcome
		err error
	}
	results := make(chan result, len(owners))
	for i, p := range owners {
		go func(i int, p *harness.Person) {
			t0 := time.Now()
			out, err := phone.SendAuto(ctx, phone.AutoOptions{Session: p.Session, Key: p.Key, LinkAddr: fleet.Link.Addr(),
				CloudTimeout: o.CloudTimeout}, phone.Request{VIN: creds[i].VIN, Action: protocol.ActionUnlock}, nil)
			results <- result{i, time.Since(t0), out, err}
		}(i, p)
	}
	for range owners {
		r := <-results
		ok := r.err == nil && r.out.Path == phone.PathLocal && r.out.Reply.Status == protocol.ReplyExecuted
		rep.Paths["local"].add(r.d, ok)
		if r.out.Path == phone.PathLocal {
			rep.Fallback.CloudWait.add(r.out.CloudWait, ok)
			rep.Fallback.Link.add(r.d-r.out.CloudWait, ok)
		}
		rep.JournalExpected++
		if !ok {
			rep.LegitimateFailed++
			rep.Problems = append(rep.Problems, fmt.Sprintf("outage unlock of %s by %s: %v path=%s %s %s", creds[r.i].VIN, owners[r.i].Name, r.err, r.out.Path, r.out.Reply.Status, r.out.Reply.Reason))
		}
	}
	say("local path: %d/%d owners unlocked through the fallback", rep.Paths["local"].Successes, len(owners))

	// Revoked friends, and a stranger's key on every car, try the local link.
	stranger, err := sign.Generate()
	if err != nil {
		return fail("%v", err)
	}
	for i := range creds {
		tries := []struct {
			key  *sign.Signer
			user string
		}{{stranger, "mallory"}}
		if revoked[i] {
			tries = append(tries, struct {
				key  *sign.Signer
				user string
			}{friends[i].Key, friends[i].Name})
		}
		for _, tr := range tries {
			rep.IllegitimateAttempts++
			rep.JournalExpected++
			res, err := phone.LocalSend(ctx, fleet.Link.Addr(), owners[i].Session.LinkTrust(), tr.key, tr.user, phone.Request{VIN: creds[i].VIN, Action: protocol.ActionUnlock})
			switch {
			case err != nil:
				rep.Problems = append(rep.Problems, fmt.Sprintf("local attempt by %s on %s: %v", tr.user, creds[i].VIN, err))
				rep.JournalExpected-- // the car never saw it
			case res.Status == protocol.ResultExecuted:
				rep.IllegitimateSucceeded++
			default:
				rep.Refusals[string(res.Reason)]++
			}
		}
	}
	say("illegitimate attempts: %d, succeeded: %d, refusals %v", rep.IllegitimateAttempts, rep.IllegitimateSucceeded, rep.Refusals)

	if err := cloud.Up(ctx); err != nil {
		return fail("bring the cloud back: %v", err)
	}
	say("the cloud is back; cars reconnect and send their journals")
	err = harness.WaitFor(ctx, 30*time.Second, func() error {
		evs, err := cloud.G.Audit().Query(audit.Filter{Kind: audit.KindVehicle, Limit: 1 << 30})
		if err != nil {
			return err
		}
		rep.JournalFiled = len(evs)
		if rep.JournalFiled < rep.JournalExpected {
			return fmt.Errorf("%d of %d journal entries filed", rep.JournalFiled, rep.JournalExpected)
		}
		return nil
	})
	if err != nil {
		rep.Problems = append(rep.Problems, "journals: "+err.Error())
	}
	say("journals: %d of %d local-link decisions in the gateway's audit log", rep.JournalFiled, rep.JournalExpected)

	for _, p := range rep.Paths {
		p.finish()
	}
	rep.Fallback.CloudWait.finish()
	rep.Fallback.Link.finish()
	rep.OK = rep.LegitimateFailed == 0 && rep.IllegitimateSucceeded == 0 && rep.JournalFiled >= rep.JournalExpected &&
		rep.Paths["local"].Successes == len(owners) && len(rep.Problems) == 0
	rep.DurationMs = time.Since(start).Milliseconds()
	return rep
}

// setUp makes car i's owner (enrolled, paired) and, for every third car, a friend with a
// shared key the owner then revokes.
func setUp(ctx context.Context, cloud *harness.Cloud, vin string, i int, owners, friends []*harness.Person, revoked []bool) error {
	owner := &harness.Person{Name: fmt.Sprintf("owner%d", i), Password: fmt.Sprintf("drill-password-%d", i)}
	if err := cloud.AddUser(ctx, owner.Name, owner.Password, vin); err != nil {
		return err
	}
	if err := owner.Login(ctx, cloud); err != nil {
		return err
	}
	if _, err := owner.Enroll(ctx, cloud); err != nil {
		return err
	}
	if _, err := owner.Pair(ctx, vin); err != nil {
		return err
	}
	owners[i] = owner
	if i%3 != 0 {
		return nil
	}
	friend := &harness.Person{Name: fmt.Sprintf("friend%d", i), Password: fmt.Sprintf("drill-password-f%d", i)}
	if err := cloud.AddUser(ctx, friend.Name, friend.Password, ""); err != nil {
		return err
	}
	// The owner's pairing elevated this login session: sharing and revoking need no new code.
	if _, err := owner.Session.Client().ShareKey(ctx, api.ShareRequest{VIN: vin, User: friend.Name, Role: protocol.RoleDriver}); err != nil {
		return fmt.Errorf("%s shares %s: %w", owner.Name, vin, err)
	}
	if err := friend.Login(ctx, cloud); err != nil {
		return err
	}
	if _, err := friend.Enroll(ctx, cloud); err != nil {
		return err
	}
	k, err := friend.Pair(ctx, vin)
	if err != nil {
		return err
	}
	if _, err := owner.Session.Client().RevokeKey(ctx, api.RevokeRequest{VIN: vin, KeyID: k.ID}); err != nil {
		return fmt.Errorf("%s revokes %s's key: %w", owner.Name, friend.Name, err)
	}
	friends[i], revoked[i] = friend, true
	return nil
}

// Summary is a human-readable table of a report.
func (r Report) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "outage drill with %s: ", cmdline.Plural(r.Cars, "car"))
	if r.OK {
		b.WriteString("PASSED\n")
	} else {
		b.WriteString("FAILED\n")
	}
	const row = "%-34s %8d %9d %8.2f %8.2f %8.2f\n"
	fmt.Fprintf(&b, "%-34s %8s %9s %8s %8s %8s\n", "path", "attempts", "successes", "p50 ms", "p99 ms", "max ms")
	labels := map[string]string{"cloud": "cloud (before the outage)", "local": "local, tap to answer (fallback)¹"}
	for _, name := range []string{"cloud", "local"} {
		p := r.Paths[name]
		fmt.Fprintf(&b, row, labels[name], p.Attempts, p.Successes, p.P50Ms, p.P99Ms, p.MaxMs)
	}
	if w, l := r.Fallback.CloudWait, r.Fallback.Link; w.Attempts > 0 {
		fmt.Fprintf(&b, row, "  of which waiting for the cloud", w.Attempts, w.Successes, w.P50Ms, w.P99Ms, w.MaxMs)
		fmt.Fprintf(&b, row, "  of which the local link itself", l.Attempts, l.Successes, l.P50Ms, l.P99Ms, l.MaxMs)
		fmt.Fprintf(&b, "¹ each phone first tries the cloud and gives up after --cloud-timeout (%s); only then does it use the local link\n",
			time.Duration(r.CloudTimeoutMs)*time.Millisecond)
	}
	fmt.Fprintf(&b, "legitimate unlocks failed: %d\n", r.LegitimateFailed)
	reasons := make([]string, 0, len(r.Refusals))
	for reason, n := range r.Refusals {
		reasons = append(reasons, fmt.Sprintf("%s %d", reason, n))
	}
	slices.Sort(reasons)
	fmt.Fprintf(&b, "illegitimate attempts: %d, succeeded: %d, refused by reason: %s\n", r.IllegitimateAttempts, r.IllegitimateSucceeded, strings.Join(reasons, ", "))
	fmt.Fprintf(&b, "journal entries filed after the outage: %d of %d\n", r.JournalFiled, r.JournalExpected)
	for _, p := range r.Problems {
		fmt.Fprintf(&b, "problem: %s\n", p)
	}
	return b.String()
}
