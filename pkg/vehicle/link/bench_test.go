package link_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/vehicle"
	"telematics/pkg/vehicle/link"
	"telematics/pkg/vehicle/link/linktest"
	"telematics/pkg/vehicle/vehicletest"
)

// BenchmarkLocalUnlock is one unlock over the local link as a phone does it (phone.LocalSend:
// challenge, signed command, the car's verification and durable commit) against a car behind a
// link.Server on loopback, sequentially, so it is latency. "challenge" is the challenge's round
// trip alone on a new connection; "exchange" the whole LocalSend, alternating unlock and lock.
//
//	go test -run XXX -bench LocalUnlock -benchtime 2000x ./pkg/vehicle/link/
func BenchmarkLocalUnlock(b *testing.B) {
	now := time.Now()
	gw := vehicletest.NewGatewayAt(b, now)
	st := vehicletest.OpenStore(b, b.TempDir())
	// The car's clock stands still at now: commands expire 10 s after the phone's time.Now,
	// so a run must stay well under that.
	car := linktest.NewCar(b, st, gw.Creds(b, vehicletest.VIN), vehicletest.NewClock(now))
	vehicletest.Install(b, car, gw.Whitelist(b, vehicletest.WhitelistSpec{}))
	garage := vehicle.NewGarage()
	garage.Put(car)
	srv := link.NewServer(garage, nil)
	if err := srv.Start("127.0.0.1:0"); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { srv.Close() })
	owner := gw.Cast.Owner

	b.Run("challenge", func(b *testing.B) {
		client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		b.ReportAllocs()
		for b.Loop() {
			resp, err := client.Post(srv.URL()+"/v1/link/"+vehicletest.VIN+"/challenge", "application/json", nil)
			if err != nil {
				b.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Fatalf("challenge: %s", resp.Status)
			}
		}
	})
	b.Run("exchange", func(b *testing.B) {
		actions := []protocol.Action{protocol.ActionUnlock, protocol.ActionLock}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			res, err := phone.LocalSend(context.Background(), srv.Addr(), gw.PhoneTrust(b), owner.Signer, owner.Key.User,
				phone.Request{VIN: vehicletest.VIN, Action: actions[i%2]})
			if err != nil || res.Status != protocol.ResultExecuted {
				b.Fatalf("%+v %v", res, err)
			}
			i++
		}
	})
}
