package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"telematics/pkg/api"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/vehicle"
	"telematics/pkg/vehicle/carstore"
	vehiclefleet "telematics/pkg/vehicle/fleet"
)

// The digital-key scenarios (commands, revoke, local) run real cars: pkg/vehicle/fleet's Run in
// this process, which verify the gateway's grant and the phone's signature against their own
// whitelists, commit each command to their bbolt store and serve the local link from the same
// Garage. Each car gets an owner who does what a person does through the gateway's HTTP API
// (gateway/harness's Person, against a gateway in another process): the admin adds the user and
// assigns the car, the owner logs in, enrolls TOTP and confirms it with a code, and pairs a
// phone key with a code. Setup is not measured; it ends when every car acknowledged the
// whitelist that holds its keys.

// person is a user with a phone: a login session, a TOTP authenticator and a phone key.
type person struct {
	name, password string
	vin            string   // the (first) car they own ("" for the revoke scenario's friend)
	vins           []string // every car they own, vin first (--owners: cars j, j+M, j+2M, …)
	sess           *phone.Session
	key            *sign.Signer

	mu   sync.Mutex
	auth *phone.Authenticator

	codeMu sync.Mutex // one code-bearing retry at a time (pairElevated)
}

// code is what the person's authenticator shows (phone.Authenticator).
func (p *person) code() (string, error) {
	p.mu.Lock()
	a := p.auth
	p.mu.Unlock()
	if a == nil {
		return "", fmt.Errorf("%s has no authenticator: enroll first", p.name)
	}
	return a.Code()
}

// keyWorld is the cars, owners and phones of one digital-key run.
type keyWorld struct {
	r      *runner
	s      *sut
	creds  []protocol.Credentials
	owners []*person // the owners: owners[i] owns creds[i].VIN, or with --owners M cars i, i+M, …
	// carOwner[i] is the index in owners of car creds[i]'s owner.
	carOwner []int
	runID    string // makes user names unique on a gateway that is reused (target mode)

	garage *vehicle.Garage
	store  *carstore.Store
	dir    string
	cancel context.CancelFunc
	done   chan struct{}
	stats  vehiclefleet.Stats
	err    error
}

// startCars runs the cars of creds against the system under test's broker, in this process.
func (w *keyWorld) startCars(ctx context.Context) error {
	var err error
	if w.dir, err = os.MkdirTemp("", "vehicle-sim-bench-cars-"); err != nil {
		return err
	}
	if w.store, err = carstore.Open(filepath.Join(w.dir, carstore.File)); err != nil {
		return err
	}
	w.garage = vehicle.NewGarage()
	fctx, cancel := context.WithCancel(context.Background())
	w.cancel, w.done = cancel, make(chan struct{})
	go func() {
		defer close(w.done)
		w.stats, w.err = vehiclefleet.Run(fctx, vehiclefleet.Config{
			BrokerURL: "tcp://" + w.s.mqttAddr, Creds: w.creds, Store: w.store, Garage: w.garage,
			TelemetryInterval: vehiclefleet.DefaultTelemetryInterval, ConnectRate: 2000,
			MaxReconnectInterval: 2 * time.Second,
		})
	}()
	return nil
}

// stopCars stops the cars (each finishes its command and says offline) and removes their store.
func (w *keyWorld) stopCars() error {
	if w.cancel == nil {
		return nil
	}
	w.cancel()
	<-w.done
	w.cancel = nil
	err := w.store.Close()
	os.RemoveAll(w.dir)
	if w.err != nil && !errors.Is(w.err, context.Canceled) {
		return errors.Join(err, w.err)
	}
	return err
}

// views returns the gateway's view of the run's cars, by VIN (one request for all of them).
func (w *keyWorld) views(ctx context.Context) (map[string]api.VehicleView, error) {
	all, err := w.s.admin().Vehicles(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]api.VehicleView, len(w.creds))
	for _, v := range all {
		out[v.VIN] = v
	}
	return out, nil
}

// waitCars polls the gateway until cond holds for every car of the run, or timeout.
func (w *keyWorld) waitCars(ctx context.Context, what string, timeout time.Duration, cond func(api.VehicleView) bool) error {
	deadline := time.Now().Add(timeout)
	lastLog := time.Now()
	for {
		vs, err := w.views(ctx)
		if err != nil {
			return err
		}
		n := 0
		for _, c := range w.creds {
			if cond(vs[c.VIN]) {
				n++
			}
		}
		if n == len(w.creds) {
			return nil
		}
		if err := w.s.checkAlive(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d cars %s after %s", n, len(w.creds), what, timeout)
		}
		if time.Since(lastLog) > 5*time.Second {
			w.r.logf("%d/%d cars %s", n, len(w.creds), what)
			lastLog = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(w.pollEvery()):
		}
	}
}

// pollEvery is how often waitCars asks: every poll has the gateway encode every car (~1 KB
// each, with its keys), so a large fleet is polled less often (200 ms up to 2,000 cars, then
// 100 µs a car: 1 s at 10,000).
func (w *keyWorld) pollEvery() time.Duration {
	return max(200*time.Millisecond, time.Duration(len(w.creds))*100*time.Microsecond)
}

func online(v api.VehicleView) bool { return v.Twin != nil && v.Twin.Status == protocol.StatusOnline }

func synced(v api.VehicleView) bool {
	return v.Keys != nil && v.Keys.Version > 0 && v.Keys.AckedVersion >= v.Keys.Version
}

// newPerson adds a user (owner of vin unless vin is ""), logs them in and enrolls TOTP.
func (w *keyWorld) newPerson(ctx context.Context, name, vin string) (*person, error) {
	pw := make([]byte, 12)
	rand.Read(pw)
	p := &person{name: name, password: "bench-" + hex.EncodeToString(pw), vin: vin}
	if err := w.s.admin().AddUser(ctx, name, p.password); err != nil {
		return nil, err
	}
	if vin != "" {
		if _, err := w.s.admin().Assign(ctx, vin, name, protocol.RoleOwner); err != nil {
			return nil, err
		}
	}
	sess, err := phone.Login(ctx, w.s.gatewayURL, name, p.password, "")
	if err != nil {
		return nil, fmt.Errorf("%s logs in: %w", name, err)
	}
	p.sess = sess
	auth, _, err := phone.EnrollAuthenticator(ctx, sess.Client())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p.mu.Lock()
	p.auth = auth
	p.mu.Unlock()
	if p.key, err = sign.Generate(); err != nil {
		return nil, err
	}
	return p, nil
}

// pair pairs p's phone key with vin: with a code, or on the login session a code elevated
// (withCode false).
func (p *person) pair(ctx context.Context, vin string, withCode bool) error {
	code := ""
	if withCode {
		var err error
		if code, err = p.code(); err != nil {
			return err
		}
	}
	if _, err := phone.PairKey(ctx, p.sess, p.key, vin, p.name+"'s phone", code); err != nil {
		return fmt.Errorf("%s pairs a key with %s: %w", p.name, vin, err)
	}
	return nil
}

// parallel runs f(i) for i in [0, n), at most conc at once, and returns the first error.
func parallel(ctx context.Context, n, conc int, f func(i int) error) error {
	var (
		next  atomic.Int64
		first error
		mu    sync.Mutex
		wg    sync.WaitGroup
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range min(conc, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					cancel()
				}
			}
		}()
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	return first
}

// setUpOwners makes every car's owner: user, login, TOTP, a paired phone key. With --owners M
// (fleetOwners) M owners share the cars.
func (w *keyWorld) setUpOwners(ctx context.Context) error {
	if w.r.cfg.Owners > 0 {
		return w.setUpFleetOwners(ctx, w.r.cfg.Owners)
	}
	w.owners = make([]*person, len(w.creds))
	w.carOwner = make([]int, len(w.creds))
	var done atomic.Int64
	return parallel(ctx, len(w.creds), w.r.cfg.SetupConcurrency, func(i int) error {
		vin := w.creds[i].VIN
		p, err := w.newPerson(ctx, fmt.Sprintf("bench%s_o%d", w.runID, i), vin)
		if err != nil {
			return err
		}
		p.vins = []string{vin}
		if err := p.pair(ctx, vin, true); err != nil {
			return err
		}
		w.owners[i], w.carOwner[i] = p, i
		if n := done.Add(1); n%500 == 0 {
			w.r.logf("%d/%d owners set up", n, len(w.creds))
		}
		return nil
	})
}

// spreadCars gives n cars to m owners round-robin: owner j gets cars j, j+m, j+2m, …; it
// returns each car's owner and each owner's cars (its first car is car j).
func spreadCars(n, m int) (carOwner []int, cars [][]int) {
	carOwner = make([]int, n)
	cars = make([][]int, m)
	for i := range n {
		j := i % m
		carOwner[i] = j
		cars[j] = append(cars[j], i)
	}
	return carOwner, cars
}

// setUpFleetOwners spreads the cars over m owners, as a fleet operator's accounts hold them:
// each owner is added, owns its first car, logs in, enrolls TOTP and pairs one phone key with
// that car with a code (m owners, cfg.SetupConcurrency at once: two argon2id hashes each);
// then every other car is assigned to its owner and paired with the owner's key on the login
// session that first code elevated, cfg.SetupConcurrency cars at once (each pairing is one
// key change of its own car, which the gateway commits concurrently with other cars').
func (w *keyWorld) setUpFleetOwners(ctx context.Context, m int) error {
	cfg := w.r.cfg
	carOwner, cars := spreadCars(len(w.creds), m)
	w.carOwner = carOwner
	w.owners = make([]*person, m)
	t0 := time.Now()
	var done atomic.Int64
	err := parallel(ctx, m, cfg.SetupConcurrency, func(j int) error {
		first := w.creds[cars[j][0]].VIN
		p, err := w.newPerson(ctx, fmt.Sprintf("bench%s_f%d", w.runID, j), first)
		if err != nil {
			return err
		}
		p.vins = make([]string, len(cars[j]))
		for k, i := range cars[j] {
			p.vins[k] = w.creds[i].VIN
		}
		if err := p.pair(ctx, first, true); err != nil {
			return err
		}
		w.owners[j] = p
		if n := done.Add(1); n%100 == 0 {
			w.r.logf("%d/%d owners set up", n, m)
		}
		return nil
	})
	if err != nil {
		return err
	}
	rest := make([]int, 0, len(w.creds)-m)
	for i := range w.creds {
		if cars[carOwner[i]][0] != i {
			rest = append(rest, i)
		}
	}
	w.r.logf("%d owners set up in %.1fs (user, login, TOTP, first car paired); assigning and pairing their other %d cars, %d at a time",
		m, time.Since(t0).Seconds(), len(rest), cfg.SetupConcurrency)
	t1 := time.Now()
	done.Store(0)
	var retried atomic.Int64
	err = parallel(ctx, len(rest), cfg.SetupConcurrency, func(k int) error {
		i := rest[k]
		p, vin := w.owners[carOwner[i]], w.creds[i].VIN
		if _, err := w.s.admin().Assign(ctx, vin, p.name, protocol.RoleOwner); err != nil {
			return fmt.Errorf("assign %s to %s: %w", vin, p.name, err)
		}
		withCode, err := p.pairElevated(ctx, vin)
		if err != nil {
			return err
		}
		if withCode {
			retried.Add(1)
		}
		if n := done.Add(1); n%1000 == 0 {
			w.r.logf("%d/%d further cars assigned and paired", n, len(rest))
		}
		return nil
	})
	if err != nil {
		return err
	}
	w.r.logf("%d further cars assigned and paired in %.1fs (%d needed a new code: the step-up had lapsed)",
		len(rest), time.Since(t1).Seconds(), retried.Load())
	return nil
}

// pairElevated pairs p's key with vin on the login session a code elevated; if the elevation
// lapsed (a long setup) the owner types a new code, one retry of the person's at a time so
// that concurrent retries do not spend each other's codes (a code of an earlier step than one
// accepted is refused as replayed). withCode reports whether it took a code.
func (p *person) pairElevated(ctx context.Context, vin string) (withCode bool, err error) {
	err = p.pair(ctx, vin, false)
	if !totpRequired(err) {
		return false, err
	}
	p.codeMu.Lock()
	defer p.codeMu.Unlock()
	// Another pairing of p's may have elevated the session again while this one waited.
	if err = p.pair(ctx, vin, false); !totpRequired(err) {
		return false, err
	}
	return true, p.pair(ctx, vin, true)
}

func totpRequired(err error) bool {
	var ae *api.Error
	return errors.As(err, &ae) && ae.Reason == protocol.ReasonTOTPRequired
}

// allowApps puts the owners' app tokens into mosquitto's password file.
func (w *keyWorld) allowApps(ctx context.Context, ps []*person) error {
	if w.s.mosq == nil {
		return nil
	}
	users := make([]protocol.Credentials, len(ps))
	for i, p := range ps {
		users[i] = protocol.Credentials{VIN: p.name, ClientID: p.sess.ClientID, Username: p.name, Token: p.sess.Token}
	}
	return w.s.mosq.allow(ctx, users)
}

// runKeys runs a digital-key scenario on the system under test run has started and
// provisioned: the cars, their owners, then the scenario's phase, which fills res.
func (r *runner) runKeys(ctx context.Context, s *sut, creds []protocol.Credentials, setup time.Time, res *Result) (err error) {
	cfg := r.cfg
	id := make([]byte, 3)
	rand.Read(id)
	w := &keyWorld{r: r, s: s, creds: creds, runID: hex.EncodeToString(id)}
	if err := w.startCars(ctx); err != nil {
		return err
	}
	defer func() {
		if serr := w.stopCars(); serr != nil && err == nil {
			err = fmt.Errorf("stop the cars: %w", serr)
		}
	}()
	if err := w.waitCars(ctx, "online", 60*time.Second+time.Duration(cfg.Cars)*time.Millisecond, online); err != nil {
		return err
	}
	res.Connected = int64(cfg.Cars)
	owners := "their owners"
	if cfg.Owners > 0 {
		owners = fmt.Sprintf("%d owners, round-robin", cfg.Owners)
	}
	r.logf("%d cars online in %.1fs; setting up %s (user, login, TOTP, phone key)", cfg.Cars, time.Since(setup).Seconds(), owners)
	if err := w.setUpOwners(ctx); err != nil {
		return fmt.Errorf("set up owners: %w", err)
	}
	res.Owners = len(w.owners)
	r.logf("owners set up %.1fs after the start of the setup", time.Since(setup).Seconds())

	var phase func(context.Context, *keyWorld, *measure, *Result) error
	switch cfg.Scenario {
	case ScenarioCommands:
		phase = runCommands
	case ScenarioRevoke:
		phase = runRevoke
	case ScenarioLocal:
		phase = runLocal
	default:
		return fmt.Errorf("scenario %q is not a digital-key scenario", cfg.Scenario)
	}
	m := &measure{s: s, setupStart: setup}
	if err := phase(ctx, w, m, res); err != nil {
		return err
	}
	if err := s.checkAlive(); err != nil {
		return err
	}
	end, err := s.sample()
	if err != nil {
		return err
	}
	res.HostLoad[1] = loadAverage()
	for i, p := range s.procs {
		pr := ProcResult{Role: p.role, PID: p.pid, RSSKB: end[i].RSSKB, AnonKB: end[i].AnonKB, HWMKB: end[i].HWMKB}
		if len(m.cpu0) == len(s.procs) && len(m.cpu1) == len(s.procs) {
			pr.RSSKBBase = m.cpu0[i].RSSKB
			pr.CPUPct = cpuPercent(m.cpu0[i], m.cpu1[i])
		}
		res.Processes = append(res.Processes, pr)
	}
	if !m.load0.IsZero() {
		res.LoaderCPUPct = 100 * float64(m.loadCPU1-m.loadCPU0) / float64(m.load1.Sub(m.load0))
	}
	res.LoadProcs = 1
	for _, n := range res.ErrorsByReason {
		res.Errors += n
	}
	r.logf("done: %d errors", res.Errors)
	return nil
}

// measure brackets a scenario's measured phase: the system under test's CPU and the load
// generator's (this process: cars and phones).
type measure struct {
	s                  *sut
	setupStart         time.Time
	cpu0, cpu1         []procSample
	load0, load1       time.Time
	loadCPU0, loadCPU1 time.Duration
}

func (m *measure) begin() error {
	var err error
	m.cpu0, err = m.s.sample()
	m.load0, m.loadCPU0 = time.Now(), selfCPU()
	return err
}

func (m *measure) end() error {
	var err error
	m.cpu1, err = m.s.sample()
	m.load1, m.loadCPU1 = time.Now(), selfCPU()
	return err
}

func selfCPU() time.Duration {
	s, err := readProc(os.Getpid())
	if err != nil {
		return 0
	}
	return s.CPU
}

// errorCounts counts errors by reason, concurrently, and keeps the first error's text.
type errorCounts struct {
	mu    sync.Mutex
	m     map[string]int64
	first string
}

func (e *errorCounts) add(reason string) { e.addN(reason, 1) }

// addErr counts err under its reason (sendErrorReason) and keeps its text if it is the first.
func (e *errorCounts) addErr(err error) {
	e.add(sendErrorReason(err))
	e.mu.Lock()
	if e.first == "" {
		e.first = err.Error()
	}
	e.mu.Unlock()
}

func (e *errorCounts) firstError() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.first
}

func (e *errorCounts) addN(reason string, n int64) {
	e.mu.Lock()
	if e.m == nil {
		e.m = map[string]int64{}
	}
	e.m[reason] += n
	e.mu.Unlock()
}

func (e *errorCounts) snapshot() map[string]int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.m) == 0 {
		return nil
	}
	out := make(map[string]int64, len(e.m))
	for k, v := range e.m {
		out[k] = v
	}
	return out
}

// sendErrorReason names an error that kept a phone from getting a car's answer.
func sendErrorReason(err error) string {
	switch {
	case errors.Is(err, phone.ErrNoTerminalReply):
		return "no_terminal_reply"
	case strings.HasPrefix(err.Error(), "publish request:"):
		// pkg/phone: the broker did not acknowledge the request (PUBACK) within 5 s.
		return "request_not_acknowledged"
	case errors.Is(err, phone.ErrCarUnreachable):
		return "car_unreachable"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	}
	var ae *api.Error
	if errors.As(err, &ae) && ae.Reason != "" {
		return string(ae.Reason)
	}
	return "send_failed"
}

// setPercentiles fills the latency fields of res from h (µs).
func setPercentiles(res *Result, what string, h *hdrhistogram.Histogram) {
	if h == nil || h.TotalCount() == 0 {
		return
	}
	ms := func(us int64) *float64 { v := float64(us) / 1000; return &v }
	res.Latency = what
	res.P50Ms, res.P90Ms, res.P99Ms = ms(h.ValueAtQuantile(50)), ms(h.ValueAtQuantile(90)), ms(h.ValueAtQuantile(99))
	res.P999Ms, res.MaxMs = ms(h.ValueAtQuantile(99.9)), ms(h.Max())
}

// paced calls fire(k) for k = 0, 1, … at rate calls per second over all k for d, each in its
// own goroutine (an open loop: a slow answer does not delay the next call), with at most
// maxInflight unanswered at once; a call due while that many are outstanding is not made and
// counted in skipped. lag records how late each call started against its schedule. It returns
// the calls made and the dispatch window, after every call returned.
func paced(ctx context.Context, rate float64, d time.Duration, maxInflight int, lag *latency, fire func(k int)) (made, skipped int64, window time.Duration) {
	var (
		wg       sync.WaitGroup
		inflight atomic.Int64
	)
	start := time.Now()
	end := start.Add(d)
	for k := 0; ctx.Err() == nil; k++ {
		due := start.Add(time.Duration(float64(k) / rate * float64(time.Second)))
		if !due.Before(end) {
			break
		}
		// Sleep only when more than 200 µs ahead: a shorter sleep oversleeps by about as much.
		if wait := time.Until(due); wait > 200*time.Microsecond {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
		}
		lag.record(max(time.Since(due), 0))
		if inflight.Load() >= int64(maxInflight) {
			skipped++
			continue
		}
		inflight.Add(1)
		wg.Add(1)
		made++
		go func() {
			defer wg.Done()
			defer inflight.Add(-1)
			fire(k)
		}()
	}
	window = time.Since(start)
	wg.Wait()
	return made, skipped, window
}

// defaultActions are the actions the owners cycle through: unlock needs a code, which the
// owner's step-up (the TOTP-authorized unlock before the window) covers for twofa.step_up_ttl,
// behind every broker (the app's MQTT session with the embedded one, its phone key behind
// another).
func defaultActions(cfg Config) []protocol.Action {
	names := cfg.Actions
	if len(names) == 0 {
		names = []string{"unlock", "lock"}
	}
	out := make([]protocol.Action, len(names))
	for i, n := range names {
		out[i] = protocol.Action(n)
	}
	return out
}

func actionNames(as []protocol.Action) []string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = string(a)
	}
	return out
}

// sortedKeys lists a map's keys in order.
func sortedKeys(m map[string]int64) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
