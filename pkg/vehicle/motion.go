package vehicle

import (
	"hash/fnv"
	"math"
	"math/rand/v2"
	"time"
)

// The motion model: a car alternates between parking and trips around its home point. On a
// trip it accelerates and brakes at bounded rates, turns gradually, and turns back when it
// strays more than RoamRadiusKm from home, so consecutive positions are never further apart
// than its speed allows. The battery drains with distance and fills while the car is plugged
// in. Randomness comes from the car's own generator.
const (
	// MaxSpeedKmh is the fastest a simulated car drives.
	MaxSpeedKmh = 130.0
	// RoamRadiusKm is how far from home a car drives before it turns back.
	RoamRadiusKm = 8.0

	minCruiseKmh        = 20.0
	accelKmhPerS        = 9.0  // 2.5 m/s²
	brakeKmhPerS        = 12.0 // 3.3 m/s²
	maxTurnDegPerS      = 8.0
	drainPctPerKm       = 0.2  // 15 kWh/100 km on a 75 kWh battery
	chargePctPerMin     = 0.25 // 11 kW AC on 75 kWh
	climatePctPerMin    = 0.02 // HVAC while parked
	lowSoCPercent       = 12.0 // below this a trip ends and the car is plugged in
	plugInBelowPercent  = 30.0 // parked below this, the driver plugs in
	unplugAbovePercent  = 80.0 // a charging car leaves for a trip only above this
	kmPerDegLat         = 111.32
	remoteStartDuration = 10 * time.Minute
	// maxCatchUp bounds the time one advance simulates: after a longer gap (the process was
	// stopped, the machine slept) the car simply stood still for the rest of it.
	maxCatchUp = 10 * time.Minute
	stepMs     = 1000
)

// Base of the simulated fleet: cars live within ±0.2° lat / ±0.3° lon of Munich.
const baseLat, baseLon = 48.137, 11.575

// vinHash is a stable per-car number, used for home points and seeds.
func vinHash(vin string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(vin))
	return h.Sum64()
}

// newState is a car's state the first time it is started: parked and locked at home.
func newState(vin string, nowMs int64, rng *rand.Rand) State {
	h := vinHash(vin)
	u1 := float64(h&0xffffffff) / float64(1<<32)
	u2 := float64(h>>32) / float64(1<<32)
	home := [2]float64{baseLat + (u1-0.5)*0.4, baseLon + (u2-0.5)*0.6}
	return State{
		Locked:       true,
		SoCPercent:   40 + rng.Float64()*55,
		Lat:          home[0],
		Lon:          home[1],
		HomeLat:      home[0],
		HomeLon:      home[1],
		HeadingDeg:   rng.Float64() * 360,
		OdometerKm:   float64(5000 + rng.IntN(80000)),
		PhaseUntilMs: nowMs + rng.Int64N(5*60_000),
	}
}

// advance simulates the car from fromMs to toMs in steps of at most a second.
func (s *State) advance(fromMs, toMs int64, rng *rand.Rand) {
	if toMs <= fromMs {
		return
	}
	if toMs-fromMs > maxCatchUp.Milliseconds() {
		fromMs = toMs - maxCatchUp.Milliseconds()
	}
	for t := fromMs; t < toMs; {
		next := min(t+stepMs, toMs)
		s.step(float64(next-t)/1000, next, rng)
		t = next
	}
}

// step advances the car by h seconds, ending at tMs.
func (s *State) step(h float64, tMs int64, rng *rand.Rand) {
	if !s.Driving {
		s.SpeedKmh = 0
		if s.Charging {
			s.SoCPercent = min(100, s.SoCPercent+chargePctPerMin*h/60)
			if s.SoCPercent >= 100 {
				s.Charging = false
			}
		}
		if s.Climate {
			s.SoCPercent = max(0, s.SoCPercent-climatePctPerMin*h/60)
		}
		if s.RemoteStartUntilMs != 0 && tMs >= s.RemoteStartUntilMs {
			s.RemoteStartUntilMs = 0
			s.Running = false
			s.Climate = false
		}
		if tMs >= s.PhaseUntilMs && s.readyForTrip() {
			s.startTrip(tMs, rng)
		}
		return
	}

	ending := tMs >= s.PhaseUntilMs || s.SoCPercent < lowSoCPercent
	switch {
	case ending:
		s.TargetSpeedKmh = 0
	case s.TargetSpeedKmh < minCruiseKmh || rng.Float64() < h/30:
		// A new speed limit or traffic every half minute or so.
		s.TargetSpeedKmh = minCruiseKmh + rng.Float64()*(MaxSpeedKmh-minCruiseKmh)
	}
	v0 := s.SpeedKmh
	v1 := v0
	if v1 < s.TargetSpeedKmh {
		v1 = min(s.TargetSpeedKmh, v1+accelKmhPerS*h)
	} else {
		v1 = max(s.TargetSpeedKmh, v1-brakeKmhPerS*h)
	}
	// The speed changes linearly over the step, so the distance is the trapezoid: never more
	// than the larger of the two speeds times h.
	distKm := (v0 + v1) / 2 * h / 3600
	s.steer(h, rng)
	s.move(distKm)
	s.OdometerKm += distKm
	s.SoCPercent = max(0, s.SoCPercent-distKm*drainPctPerKm)
	s.SpeedKmh = v1
	if ending && v1 == 0 {
		s.park(tMs, rng)
	}
}

func (s *State) readyForTrip() bool {
	if s.SoCPercent <= plugInBelowPercent/2 {
		return false
	}
	return !s.Charging || s.SoCPercent >= unplugAbovePercent
}

func (s *State) startTrip(tMs int64, rng *rand.Rand) {
	s.Driving = true
	s.Charging = false
	s.Running = true
	s.RemoteStartUntilMs = 0
	s.TrunkOpen = false
	s.Locked = true // the driver got in; the car locks itself once it rolls
	s.TargetSpeedKmh = minCruiseKmh + rng.Float64()*40
	s.HeadingDeg = math.Mod(s.HeadingDeg+rng.Float64()*180-90+360, 360)
	s.PhaseUntilMs = tMs + (3+rng.Int64N(17))*60_000
}

func (s *State) park(tMs int64, rng *rand.Rand) {
	s.Driving = false
	s.SpeedKmh = 0
	s.TargetSpeedKmh = 0
	s.Running = false
	s.Climate = false
	s.Locked = true // the driver left and locked it
	if s.PlugInOnPark || s.SoCPercent < plugInBelowPercent {
		s.Charging = true
	}
	s.PlugInOnPark = false
	s.PhaseUntilMs = tMs + (2+rng.Int64N(28))*60_000
}

// endTrip makes a driving car brake and park as soon as it stands still.
func (s *State) endTrip(tMs int64) {
	if s.Driving {
		s.PhaseUntilMs = tMs
	}
}

// steer turns the car a little, and towards home when it is outside the roaming radius.
func (s *State) steer(h float64, rng *rand.Rand) {
	turn := rng.NormFloat64() * 3 * math.Sqrt(h)
	if distanceKm(s.Lat, s.Lon, s.HomeLat, s.HomeLon) > RoamRadiusKm {
		want := bearingDeg(s.Lat, s.Lon, s.HomeLat, s.HomeLon)
		diff := math.Mod(want-s.HeadingDeg+540, 360) - 180 // in (-180, 180]
		turn = diff
	}
	limit := maxTurnDegPerS * h
	turn = max(-limit, min(limit, turn))
	s.HeadingDeg = math.Mod(s.HeadingDeg+turn+360, 360)
}

func (s *State) move(distKm float64) {
	rad := s.HeadingDeg * math.Pi / 180
	s.Lat += distKm * math.Cos(rad) / kmPerDegLat
	s.Lon += distKm * math.Sin(rad) / (kmPerDegLat * math.Cos(s.Lat*math.Pi/180))
}

// distanceKm is the equirectangular distance, exact enough within a city.
func distanceKm(lat1, lon1, lat2, lon2 float64) float64 {
	dy := (lat2 - lat1) * kmPerDegLat
	dx := (lon2 - lon1) * kmPerDegLat * math.Cos((lat1+lat2)/2*math.Pi/180)
	return math.Hypot(dx, dy)
}

func bearingDeg(lat1, lon1, lat2, lon2 float64) float64 {
	dy := lat2 - lat1
	dx := (lon2 - lon1) * math.Cos((lat1+lat2)/2*math.Pi/180)
	return math.Mod(math.Atan2(dx, dy)*180/math.Pi+360, 360)
}
