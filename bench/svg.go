package main

import (
	"fmt"
	"math"
	"os"
	"strings"
)

// series is one line of a chart.
type series struct {
	name   string
	color  string
	dashed bool
	x, y   []float64
}

// lineChart writes a line chart with logarithmic axes (both span decades
// here: 4 to 250 VMs, milliseconds to seconds, 10 to 62,250 rules).
func lineChart(path, title, xlabel, ylabel string, ss []series) error {
	const W, H, L, R, T, B = 640.0, 400.0, 70.0, 190.0, 40.0, 50.0
	minX, maxX, minY, maxY := math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
	for _, s := range ss {
		for i := range s.x {
			if s.y[i] <= 0 {
				continue
			}
			minX, maxX = math.Min(minX, s.x[i]), math.Max(maxX, s.x[i])
			minY, maxY = math.Min(minY, s.y[i]), math.Max(maxY, s.y[i])
		}
	}
	lx0, lx1 := math.Log10(minX), math.Log10(maxX)
	ly0, ly1 := math.Floor(math.Log10(minY)), math.Ceil(math.Log10(maxY))
	if ly1 == ly0 {
		ly1++
	}
	px := func(x float64) float64 { return L + (math.Log10(x)-lx0)/(lx1-lx0)*(W-L-R) }
	py := func(y float64) float64 { return H - B - (math.Log10(y)-ly0)/(ly1-ly0)*(H-T-B) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%g" height="%g" font-family="sans-serif" font-size="12">`+"\n", W, H)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%g" y="22" font-size="14" font-weight="bold">%s</text>`+"\n", L, esc(title))
	// grid: decades on y, the data's x values on x
	for d := ly0; d <= ly1; d++ {
		y := py(math.Pow(10, d))
		fmt.Fprintf(&b, `<line x1="%g" y1="%.1f" x2="%g" y2="%.1f" stroke="#ddd"/>`+"\n", L, y, W-R, y)
		fmt.Fprintf(&b, `<text x="%g" y="%.1f" text-anchor="end">%s</text>`+"\n", L-6, y+4, num(math.Pow(10, d)))
	}
	xs := map[float64]bool{}
	for _, s := range ss {
		for _, x := range s.x {
			if !xs[x] {
				xs[x] = true
				fmt.Fprintf(&b, `<line x1="%.1f" y1="%g" x2="%.1f" y2="%g" stroke="#eee"/>`+"\n", px(x), T, px(x), H-B)
				fmt.Fprintf(&b, `<text x="%.1f" y="%g" text-anchor="middle">%s</text>`+"\n", px(x), H-B+16, num(x))
			}
		}
	}
	fmt.Fprintf(&b, `<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="black"/>`+"\n", L, H-B, W-R, H-B)
	fmt.Fprintf(&b, `<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="black"/>`+"\n", L, T, L, H-B)
	fmt.Fprintf(&b, `<text x="%g" y="%g" text-anchor="middle">%s</text>`+"\n", L+(W-L-R)/2, H-10, esc(xlabel))
	fmt.Fprintf(&b, `<text transform="translate(16,%g) rotate(-90)" text-anchor="middle">%s</text>`+"\n", T+(H-T-B)/2, esc(ylabel))
	for i, s := range ss {
		var pts []string
		for j := range s.x {
			if s.y[j] > 0 {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(s.x[j]), py(s.y[j])))
			}
		}
		dash := ""
		if s.dashed {
			dash = ` stroke-dasharray="6,4"`
		}
		fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2"%s/>`+"\n", strings.Join(pts, " "), s.color, dash)
		for _, p := range pts {
			xy := strings.Split(p, ",")
			fmt.Fprintf(&b, `<circle cx="%s" cy="%s" r="3" fill="%s"/>`+"\n", xy[0], xy[1], s.color)
		}
		ly := T + 10 + float64(i)*20
		fmt.Fprintf(&b, `<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="%s" stroke-width="2"%s/>`+"\n", W-R+10, ly, W-R+30, ly, s.color, dash)
		fmt.Fprintf(&b, `<text x="%g" y="%g">%s</text>`+"\n", W-R+35, ly+4, esc(s.name))
	}
	b.WriteString("</svg>\n")
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// bar is one row of a stacked horizontal bar chart: segments from 0.
type bar struct {
	label string
	segs  []float64 // lengths, in order
}

// stackedBars writes horizontal bars made of consecutive segments (boot
// phases), with a legend naming the segments.
func stackedBars(path, title, xlabel string, names, colors []string, bars []bar) error {
	const W, L, R, T, rowH = 720.0, 150.0, 30.0, 40.0, 24.0
	H := T + float64(len(bars))*rowH + 80
	maxX := 0.0
	for _, br := range bars {
		s := 0.0
		for _, v := range br.segs {
			s += v
		}
		maxX = math.Max(maxX, s)
	}
	step := niceStep(maxX / 8)
	maxX = math.Ceil(maxX/step) * step
	px := func(x float64) float64 { return L + x/maxX*(W-L-R) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%g" height="%g" font-family="sans-serif" font-size="12">`+"\n", W, H)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="10" y="22" font-size="14" font-weight="bold">%s</text>`+"\n", esc(title))
	bottom := T + float64(len(bars))*rowH
	for x := 0.0; x <= maxX+step/2; x += step {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%g" x2="%.1f" y2="%g" stroke="#ddd"/>`+"\n", px(x), T, px(x), bottom)
		fmt.Fprintf(&b, `<text x="%.1f" y="%g" text-anchor="middle">%s</text>`+"\n", px(x), bottom+14, num(x))
	}
	fmt.Fprintf(&b, `<text x="%g" y="%g" text-anchor="middle">%s</text>`+"\n", L+(W-L-R)/2, bottom+32, esc(xlabel))
	for i, br := range bars {
		y := T + float64(i)*rowH
		fmt.Fprintf(&b, `<text x="%g" y="%g" text-anchor="end">%s</text>`+"\n", L-6, y+rowH/2+4, esc(br.label))
		x := 0.0
		for j, v := range br.segs {
			if v > 0 {
				fmt.Fprintf(&b, `<rect x="%.1f" y="%g" width="%.1f" height="%g" fill="%s"/>`+"\n", px(x), y+3, px(x+v)-px(x), rowH-6, colors[j%len(colors)])
			}
			x += v
		}
	}
	lx := 10.0
	for j, n := range names {
		fmt.Fprintf(&b, `<rect x="%g" y="%g" width="12" height="12" fill="%s"/>`+"\n", lx, bottom+44, colors[j%len(colors)])
		fmt.Fprintf(&b, `<text x="%g" y="%g">%s</text>`+"\n", lx+16, bottom+54, esc(n))
		lx += 24 + 7*float64(len(n))
	}
	b.WriteString("</svg>\n")
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func niceStep(x float64) float64 {
	if x <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= x {
			return m * p
		}
	}
	return 10 * p
}

func num(x float64) string {
	switch {
	case x >= 1000 && x == math.Trunc(x):
		s := fmt.Sprintf("%.0f", x)
		var out []string
		for len(s) > 3 {
			out = append([]string{s[len(s)-3:]}, out...)
			s = s[:len(s)-3]
		}
		return strings.Join(append([]string{s}, out...), ",")
	case x == math.Trunc(x):
		return fmt.Sprintf("%.0f", x)
	case x >= 1:
		return fmt.Sprintf("%.1f", x)
	default:
		return fmt.Sprintf("%g", x)
	}
}

func esc(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
