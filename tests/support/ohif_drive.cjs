// Drives OHIF in Debian's headless Chromium (npm playwright-core) for tests/test_ohif.py.
//
// node ohif_drive.cjs JOBS.json   (NODE_PATH: the cached playwright-core's node_modules)
//
// JOBS.json: {chromium, out, jobs: [{name, url, slice_z, points: [[x, y, z], ...]}]}, points in
// DICOM patient coordinates (LPS mm) on the slice at z = slice_z. For each job, one page:
// open the viewer URL (a study, its SEG series to load), wait until OHIF's segmentation
// service holds the SEG, skip the onboarding tour, open the segmentation panel, show the
// slice at slice_z, map the points to page pixels (the viewport's worldToCanvas), and take
// two screenshots: with the segmentation shown and hidden. Writes OUT/report.json: per job
// the study browser's and the segmentation panel's text, the segments (label, colour) as
// OHIF holds them, the page pixels of the points, the screenshots and the timings.
// The network is closed here: no component updates, no background fetches.
'use strict';
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const ARGS = ['--no-sandbox', '--enable-unsafe-swiftshader', '--use-angle=swiftshader', '--ignore-gpu-blocklist',
  '--disable-background-networking', '--disable-component-update', '--disable-default-apps', '--disable-sync',
  '--disable-domain-reliability', '--disable-client-side-phishing-detection', '--no-first-run', '--no-default-browser-check',
  '--metrics-recording-only', '--disable-dev-shm-usage', '--mute-audio'];

async function segmentations(page) {
  return page.evaluate(() => {
    const svc = window.services && window.services.segmentationService;
    if (!svc) return [];
    return svc.getSegmentations().map(s => ({
      id: s.segmentationId,
      label: s.label,
      segments: Object.values(s.segments || {}).filter(Boolean).map(g => ({ index: g.segmentIndex, label: g.label, color: g.color })),
    }));
  });
}

async function representationColours(page) {
  return page.evaluate(() => {
    const el = window.cornerstone.getEnabledElements()[0];
    const reps = window.services.segmentationService.getSegmentationRepresentations(el.viewportId) || [];
    return reps.map(r => ({ id: r.segmentationId, type: r.type, visible: r.visible,
      colours: Object.fromEntries(Object.entries(r.segments || {}).map(([k, v]) => [k, v.color])) }));
  });
}

async function skipTour(page) {
  const skip = page.getByText('Skip all', { exact: true });
  if (await skip.count()) await skip.first().click().catch(() => {});
}

async function showSlice(page, z) {
  return page.evaluate(async (z) => {
    const el = window.cornerstone.getEnabledElements()[0];
    const vp = el.viewport;
    const ids = vp.getImageIds();
    let best = 0, dist = Infinity;
    ids.forEach((id, n) => {
      const plane = window.cornerstone.metaData.get('imagePlaneModule', id);
      const d = Math.abs(plane.imagePositionPatient[2] - z);
      if (d < dist) { dist = d; best = n; }
    });
    await vp.setImageIdIndex(best);
    vp.render();
    return { index: best, distance: dist, count: ids.length };
  }, z);
}

async function toPage(page, points) {
  return page.evaluate((points) => {
    const el = window.cornerstone.getEnabledElements()[0];
    const vp = el.viewport;
    const rect = vp.element.getBoundingClientRect();
    return { rect: [rect.left, rect.top, rect.width, rect.height],
      points: points.map(p => { const c = vp.worldToCanvas(p); return [rect.left + c[0], rect.top + c[1]]; }) };
  }, points);
}

async function toggleVisible(page) {
  return page.evaluate(() => {
    const el = window.cornerstone.getEnabledElements()[0];
    const svc = window.services.segmentationService;
    for (const rep of svc.getSegmentationRepresentations(el.viewportId) || []) {
      svc.toggleSegmentationRepresentationVisibility(el.viewportId, { segmentationId: rep.segmentationId, type: rep.type });
    }
    el.viewport.render();
  });
}

async function run(browser, job, out) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const log = [];
  page.on('console', m => { if (m.type() === 'error') log.push(m.text().slice(0, 400)); });
  page.on('pageerror', e => log.push('pageerror: ' + e.message.slice(0, 400)));
  const t0 = Date.now();
  const report = { name: job.name, log };
  try {
    await page.goto(job.url, { waitUntil: 'load', timeout: 60000 });
    report.page_load_s = (Date.now() - t0) / 1000;
    // loaded: the SEG is a segmentation with a representation in the viewport; refused: OHIF logged an error
    // about it (it then shows "Loading SEG..." for ever, so the wait ends at the first such error)
    const deadline = Date.now() + (job.timeout_ms || 90000);
    for (;;) {
      const loaded = await page.evaluate(() => {
        const svc = window.services && window.services.segmentationService;
        const el = window.cornerstone && window.cornerstone.getEnabledElements()[0];
        if (!svc || !el || svc.getSegmentations().length === 0) return false;
        return (svc.getSegmentationRepresentations(el.viewportId) || []).length > 0;
      });
      if (loaded) break;
      const refusal = log.find(line => /segmentation|\bSEG\b/i.test(line));
      if (refusal) throw new Error('OHIF refused the SEG: ' + refusal.split('\n')[0]);
      if (Date.now() > deadline) throw new Error('the SEG did not load in time');
      await page.waitForTimeout(500);
    }
    report.seg_loaded_s = (Date.now() - t0) / 1000;
    await page.waitForTimeout(1500);
    await skipTour(page);
    await page.locator('[data-cy="panelSegmentation-btn"]').first().click().catch(e => log.push('panel: ' + e.message));
    await page.waitForTimeout(1500);
    report.study_browser = await page.locator('[data-cy="studyBrowser-panel"]').first().innerText().catch(() => '');
    report.page_text = await page.evaluate(() => document.body.innerText);
    report.segmentations = await segmentations(page);
    report.representations = await representationColours(page);
    report.slice = await showSlice(page, job.slice_z);
    await page.waitForTimeout(2000);
    const mapped = await toPage(page, job.points);
    report.viewport_rect = mapped.rect;
    report.points_px = mapped.points;
    report.shown = path.join(out, `${job.name}.png`);
    await page.screenshot({ path: report.shown });
    await toggleVisible(page);
    await page.waitForTimeout(1500);
    report.hidden = path.join(out, `${job.name}-hidden.png`);
    await page.screenshot({ path: report.hidden });
    await toggleVisible(page);
  } catch (e) {
    report.error = String(e && e.message || e).slice(0, 2000);
    report.page_text = await page.evaluate(() => document.body.innerText).catch(() => '');
    await page.screenshot({ path: path.join(out, `${job.name}-error.png`) }).catch(() => {});
  }
  report.total_s = (Date.now() - t0) / 1000;
  await page.close();
  return report;
}

(async () => {
  const spec = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const browser = await chromium.launch({ executablePath: spec.chromium, headless: true, args: ARGS });
  const reports = [];
  try {
    for (const job of spec.jobs) reports.push(await run(browser, job, spec.out));
    reports.forEach(r => { r.browser_version = browser.version(); });
  } finally {
    await browser.close();
  }
  fs.writeFileSync(path.join(spec.out, 'report.json'), JSON.stringify(reports, null, 1));
})().catch(e => { console.error(e); process.exit(1); });
