package vehicle

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"telematics/pkg/protocol"
	"telematics/pkg/vehicle/vehicletest"
)

// haversineKm is an independent measure of the distance between two positions.
func haversineKm(lat1, lon1, lat2, lon2 float64) float64 {
	const r = 6371.0
	rad := math.Pi / 180
	dLat, dLon := (lat2-lat1)*rad, (lon2-lon1)*rad
	a := math.Sin(dLat/2)*math.Sin(dLat/2) + math.Cos(lat1*rad)*math.Cos(lat2*rad)*math.Sin(dLon/2)*math.Sin(dLon/2)
	return 2 * r * math.Asin(math.Sqrt(a))
}

// TestMotionPlausible drives cars for simulated hours a second at a time: no step covers more
// ground than its speeds allow, speeds and battery stay in range, the battery drains while
// driving and fills while charging, cars both drive and stop, a car that parks low on charge
// is plugged in and charges, and they stay near home.
func TestMotionPlausible(t *testing.T) {
	chargedCars := 0
	for seed := uint64(1); seed <= 4; seed++ {
		rng := rand.New(rand.NewPCG(seed, 99))
		nowMs := vehicletest.T0.UnixMilli()
		s := newState(vehicletest.VIN, nowMs, rng)
		// parkedLow: the car parked after a trip below plugInBelowPercent, so it must charge.
		// charged: the battery filled while plugged in.
		var drove, stopped, parkedLow, charged bool
		for i := 0; i < 8*3600; i++ {
			prev := s
			s.advance(nowMs, nowMs+1000, rng)
			nowMs += 1000
			d := haversineKm(prev.Lat, prev.Lon, s.Lat, s.Lon)
			limit := max(prev.SpeedKmh, s.SpeedKmh) / 3600 // km in one second
			if d > limit+1e-9 {
				t.Fatalf("seed %d step %d: moved %.1f m at %.1f→%.1f km/h", seed, i, d*1000, prev.SpeedKmh, s.SpeedKmh)
			}
			if s.SpeedKmh < 0 || s.SpeedKmh > MaxSpeedKmh {
				t.Fatalf("speed %v", s.SpeedKmh)
			}
			if s.SoCPercent < 0 || s.SoCPercent > 100 {
				t.Fatalf("soc %v", s.SoCPercent)
			}
			if prev.SpeedKmh > 0 && s.SpeedKmh > 0 && s.SoCPercent > prev.SoCPercent {
				t.Fatalf("battery charged while driving: %v → %v", prev.SoCPercent, s.SoCPercent)
			}
			if prev.Charging && s.Charging && s.SoCPercent < prev.SoCPercent {
				t.Fatalf("battery drained while charging: %v → %v", prev.SoCPercent, s.SoCPercent)
			}
			if home := distanceKm(s.Lat, s.Lon, s.HomeLat, s.HomeLon); home > RoamRadiusKm+5 {
				t.Fatalf("seed %d: %.1f km from home", seed, home)
			}
			drove = drove || s.SpeedKmh > 30
			stopped = stopped || (prev.Driving && !s.Driving)
			if prev.Driving && !s.Driving && s.SoCPercent < plugInBelowPercent {
				parkedLow = true
				if !s.Charging {
					t.Fatalf("seed %d step %d: parked at %.1f%% and not plugged in", seed, i, s.SoCPercent)
				}
			}
			charged = charged || (prev.Charging && s.Charging && s.SoCPercent > prev.SoCPercent)
		}
		if !drove || !stopped {
			t.Errorf("seed %d: in 8 hours drove=%v parked after a trip=%v", seed, drove, stopped)
		}
		// Whether a car needs to charge in 8 hours depends on its starting charge; one that
		// parked low must have filled up.
		if parkedLow && !charged {
			t.Errorf("seed %d: parked below %v%% but the battery never filled", seed, plugInBelowPercent)
		}
		if charged {
			chargedCars++
		}
	}
	// The seeds are fixed: at least one of their cars runs low and charges, so the checks
	// above are not vacuous.
	if chargedCars == 0 {
		t.Error("no car charged in 8 hours: the charging checks exercised nothing")
	}
}

// TestTelemetryPositionsPlausible checks the same through the car and its telemetry, at the
// fleet's 10 s interval: consecutive reported positions are never further apart than the top
// speed allows.
func TestTelemetryPositionsPlausible(t *testing.T) {
	gw := vehicletest.NewGateway(t)
	st := vehicletest.OpenStore(t, t.TempDir())
	clock := vehicletest.NewClock(vehicletest.T0)
	car := newTestCar(t, st, gw.Creds(t, vehicletest.VIN), clock)
	const dt = 10 * time.Second
	var prevLat, prevLon float64
	moved := false
	for i := 0; i < 360; i++ {
		clock.Advance(dt)
		tm, err := car.NextTelemetry()
		if err != nil {
			t.Fatal(err)
		}
		lat := tm.Signals[protocol.VSSLatitude].(float64)
		lon := tm.Signals[protocol.VSSLongitude].(float64)
		if i > 0 {
			d := haversineKm(prevLat, prevLon, lat, lon)
			// Telemetry rounds positions to 1e-6° (≈0.1 m).
			if d > MaxSpeedKmh*dt.Hours()+0.001 {
				t.Fatalf("message %d: jumped %.0f m in %s", i, d*1000, dt)
			}
			moved = moved || d > 0
		}
		prevLat, prevLon = lat, lon
	}
	if !moved {
		t.Error("the car never moved in an hour")
	}
}
