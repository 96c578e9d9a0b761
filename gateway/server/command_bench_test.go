package server_test

import (
	"context"
	"sort"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"telematics/gateway/server"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
)

// BenchmarkCloudCommand measures one command's round trip through the whole cloud path, in
// one process: phone → broker → gateway (checks, audit commit, grant) → car (verification,
// commit) → gateway (result audit) → phone. Sequential, so it is latency, not throughput.
//
//	go test -run XXX -bench CloudCommand -benchtime 300x ./gateway/server/
func BenchmarkCloudCommand(b *testing.B) {
	g := startGatewayB(b)
	creds := provisionB(b, g, 1)
	vin := creds[0].VIN
	addUserB(b, g, "alice", vin)
	runFleetB(b, g.BrokerURL(), creds)
	app := loginB(b, g, "alice", vin)
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		r, err := app.Send(context.Background(), phone.Request{VIN: vin, Action: protocol.ActionFlash}, nil)
		if err != nil || r.Status != protocol.ReplyExecuted {
			b.Fatalf("%v %+v", err, r)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(q(0.5), "p50_ms")
	b.ReportMetric(q(0.99), "p99_ms")
}

func startGatewayB(b *testing.B) *server.Gateway {
	// The per-user rate limit is not what is measured.
	return startGateway(b, b.TempDir(), func(c *server.Config) { c.Commands.RatePerMinute = 0 })
}
func provisionB(b *testing.B, g *server.Gateway, n int) []protocol.Credentials {
	return provision(b, g, n)
}
func addUserB(b *testing.B, g *server.Gateway, u, vin string) {
	addUser(b, g, u, vin, protocol.RoleOwner)
}
func runFleetB(b *testing.B, url string, c []protocol.Credentials) { runFleet(b, url, c) }
func loginB(b *testing.B, g *server.Gateway, u, vin string) *phone.App {
	app := login(b, g, u, "", vin)
	waitSynced(b, g, vin)
	return app
}

// BenchmarkCloudCommandParallel is throughput: 20 cars, each with its owner's app, commands in
// flight on all of them at once (GOMAXPROCS×4 senders). Profile it to see where the whole
// system's CPU goes per command (gateway, broker, cars and phones share the process):
//
//	go test -run XXX -bench CloudCommandParallel -benchtime 5000x -cpuprofile cpu.out ./gateway/server/
func BenchmarkCloudCommandParallel(b *testing.B) {
	g := startGatewayB(b)
	const cars = 20
	creds := provisionB(b, g, cars)
	apps := make([]*phone.App, cars)
	for i, c := range creds {
		addUserB(b, g, "user"+strconv.Itoa(i), c.VIN)
	}
	runFleetB(b, g.BrokerURL(), creds)
	for i, c := range creds {
		apps[i] = loginB(b, g, "user"+strconv.Itoa(i), c.VIN)
	}
	var next atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := int(next.Add(1)) % cars
			r, err := apps[i].Send(context.Background(), phone.Request{VIN: creds[i].VIN, Action: protocol.ActionFlash}, nil)
			if err != nil || r.Status != protocol.ReplyExecuted {
				b.Errorf("%v %+v", err, r)
				return
			}
		}
	})
}
