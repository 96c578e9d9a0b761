package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/vehicle"
	"telematics/pkg/vehicle/link"
)

// runLocal opens the cars' local link (link.Server on 127.0.0.1:0, serving the fleet's
// Garage) and has the owners send commands over it at cfg.Rate per second over all cars for
// cfg.Duration, each with phone.LocalSend: a challenge, then the command signed with the
// owner's key and carrying the nonce, each over its own connection (the phone's link client
// keeps no connection open). The car checks the signature against its own whitelist, executes,
// and commits its state, replay entry and journal entry before it answers; its journal then
// goes to the gateway on v/{vin}/events.
func runLocal(ctx context.Context, w *keyWorld, m *measure, res *Result) error {
	r, cfg := w.r, w.r.cfg
	if err := w.waitCars(ctx, "acknowledged their whitelists", 2*time.Minute, synced); err != nil {
		return err
	}
	srv := link.NewServer(w.garage, nil)
	if err := srv.Start("127.0.0.1:0"); err != nil {
		return err
	}
	defer srv.Close()
	addr := srv.Addr()
	actions := defaultActions(cfg)
	res.Actions = actionNames(actions)
	res.RateTarget = cfg.Rate
	res.LinkAddr = addr
	r.logf("local link on %s; %g commands/s over %d cars of %d owners for %s (%v)", addr, cfg.Rate, len(w.creds), len(w.owners), cfg.Duration, res.Actions)

	total, lag := newLatency(), newLatency()
	var executed atomic.Int64
	var errs errorCounts
	n := len(w.creds)
	if err := m.begin(ctx); err != nil {
		return err
	}
	res.SetupS = time.Since(m.setupStart).Seconds()
	stopProgress := progress(ctx, r, func() string {
		return fmt.Sprintf("local: %d executed, %d errors", executed.Load(), sumCounts(errs.snapshot()))
	})
	probeCtx, stopProbe := context.WithCancel(ctx)
	probe := newLatency()
	probeDone := make(chan struct{})
	go func() {
		defer close(probeDone)
		challengeProbe(probeCtx, addr, w.creds, probe)
	}()
	// A phone key may hold vehicle.MaxChallengesPerKey unused challenges of a car at once (the
	// car refuses more, rate_limited): an owner's phone has at most that many commands of a car
	// in flight, as a real phone has one. Per car and owner, as the car counts them.
	perKey := make([]chan struct{}, n)
	for i := range perKey {
		perKey[i] = make(chan struct{}, vehicle.MaxChallengesPerKey)
	}
	made, skipped, window := paced(ctx, cfg.Rate, cfg.Duration, maxInflight, lag, func(k int) {
		i := k % n // the car; its owner's phone sends, with the owner's key
		o := w.owners[w.carOwner[i]]
		action := actions[(k/n)%len(actions)]
		perKey[i] <- struct{}{}
		t0 := time.Now()
		out, err := phone.LocalSend(ctx, addr, o.sess.LinkTrust(), o.key, o.name, phone.Request{VIN: w.creds[i].VIN, Action: action})
		<-perKey[i]
		d := time.Since(t0)
		switch {
		case err != nil:
			errs.addErr(err)
		case out.Status != protocol.ResultExecuted:
			errs.add(string(out.Reason))
		default:
			executed.Add(1)
			total.record(d)
		}
	})
	stopProbe()
	<-probeDone
	stopProgress()
	if err := m.end(ctx); err != nil {
		return err
	}
	if skipped > 0 {
		errs.addN("bench_backlog", skipped)
	}
	res.DurationS = window.Seconds()
	res.Commands, res.Executed = made, executed.Load()
	res.CommandsPerS = float64(made) / window.Seconds()
	res.ExecutedPerS = float64(res.Executed) / window.Seconds()
	res.ErrorsByReason, res.FirstError = errs.snapshot(), errs.firstError()
	res.DispatchLagP99Ms = lag.percentileMs(99)
	setPercentiles(res, "challenge + command → executed", total)
	res.ChallengeP50Ms, res.ChallengeP99Ms = probe.percentileMs(50), probe.percentileMs(99)
	return nil
}

// challengeProbe asks a car for a challenge every probeEvery (slower for a small fleet), over a new connection each time
// as the phone does, until ctx ends: one exchange on the link without the car's work (no
// signature check, no commit), beside the commands. The nonces it is given expire unused.
func challengeProbe(ctx context.Context, addr string, cars []protocol.Credentials, lat *latency) {
	client := &http.Client{Timeout: phone.LocalTimeout, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	// At most one challenge a second per car: the nonces expire unused after 10 s, and a car
	// keeps at most 16 unused ones for requesters that name no key of its whitelist (it
	// refuses more with 429 instead of evicting a phone's), so a faster probe would measure
	// refusals.
	every := max(probeEvery, time.Second/time.Duration(len(cars)))
	t := time.NewTicker(every)
	defer t.Stop()
	for k := 0; ; k++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		vin := cars[k%len(cars)].VIN
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/v1/link/"+vin+"/challenge", nil)
		if err != nil {
			return
		}
		t0 := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			continue
		}
		var ch protocol.Challenge
		err = json.NewDecoder(resp.Body).Decode(&ch)
		resp.Body.Close()
		if err == nil && ch.Nonce != "" {
			lat.record(time.Since(t0))
		}
	}
}

// probeEvery is the challenge probe's interval.
const probeEvery = 20 * time.Millisecond
