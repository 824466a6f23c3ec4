// FaceForge page: upload -> progress -> a three.js view of the head's glb, its morph targets as sliders.
import * as THREE from 'three';
import { GLTFLoader } from 'three/addons/loaders/GLTFLoader.js';
import { OrbitControls } from 'three/addons/controls/OrbitControls.js';

const $ = (id) => document.getElementById(id);
const CLAY = new THREE.MeshStandardMaterial({ color: 0xc9c2b8, roughness: 0.65, metalness: 0 });
const DOWNLOADS = [  // [file name ending, label]: the files the page offers (the result also has textures, .obj, .mtl)
  ['.glb', 'glTF binary (.glb), with expressions'], ['.blend', 'Blender scene (.blend)'], ['.fbx', 'FBX (.fbx)'],
  ['_obj.zip', 'OBJ + MTL + texture (.zip)'], ['_depth.png', 'depth map (16-bit PNG)'],
];
const POLL_MS = 300;

// ---- the view ---------------------------------------------------------------------------------
const canvas = $('canvas');
const renderer = new THREE.WebGLRenderer({ canvas, antialias: false });
renderer.setPixelRatio(window.devicePixelRatio);
const scene = new THREE.Scene();
scene.background = new THREE.Color(0xeceef1);
const camera = new THREE.PerspectiveCamera(30, 1, 0.01, 100);
const controls = new OrbitControls(camera, canvas);
const studio = new THREE.Group();
studio.add(new THREE.HemisphereLight(0xffffff, 0x8a8070, 1.6));
const key = new THREE.DirectionalLight(0xffffff, 2.2);
key.position.set(1, 1.5, 2);
studio.add(key);
scene.add(studio);
const probe = new THREE.LightProbe();
const stats = { frames: 0, lastRenderMs: 0 };  // read by the browser test and benchmark
window.faceforge = stats;
const setState = (state) => { document.body.dataset.state = state; };  // ready | working | loaded | error

let head = null;            // the loaded glTF scene
let meshes = [];            // meshes with morph targets
let fitted = [];            // their weights as fitted, per mesh
let materials = new Map();  // mesh -> its textured material, while clay is shown
let framing = null;         // {target, position} of the reset view
let pending = false;

function render() {
  pending = false;
  const started = performance.now();
  renderer.render(scene, camera);
  stats.frames += 1;
  stats.lastRenderMs = performance.now() - started;
}
function requestRender() {
  if (!pending) { pending = true; requestAnimationFrame(render); }
}
function resize() {
  const { clientWidth: w, clientHeight: h } = canvas;
  renderer.setSize(w, h, false);
  camera.aspect = w / Math.max(h, 1);
  camera.updateProjectionMatrix();
  requestRender();
}
new ResizeObserver(resize).observe(canvas);
controls.addEventListener('change', requestRender);

function frame(object) {
  const box = new THREE.Box3().setFromObject(object);
  const center = box.getCenter(new THREE.Vector3());
  const size = box.getSize(new THREE.Vector3()).length();
  const distance = size / (2 * Math.tan(THREE.MathUtils.degToRad(camera.fov / 2)));
  framing = { target: center, position: center.clone().add(new THREE.Vector3(0, 0, distance * 0.75)) };
  camera.near = size / 100; camera.far = size * 20; camera.updateProjectionMatrix();
  resetView();
}
function resetView() {
  if (!framing) return;
  controls.target.copy(framing.target);
  camera.position.copy(framing.position);
  controls.update();
  requestRender();
}

async function showHead(url, face) {
  if (head) scene.remove(head);
  const gltf = await new GLTFLoader().loadAsync(url);
  head = gltf.scene;
  scene.add(head);
  meshes = []; materials = new Map();
  head.traverse((o) => { if (o.isMesh && o.morphTargetDictionary) meshes.push(o); });
  fitted = meshes.map((m) => [...m.morphTargetInfluences]);
  frame(head);
  $('clay').classList.remove('on');
  setLighting(face && face.lighting ? face.lighting : null);
  buildSliders();
  $('tools').hidden = false; $('hint').hidden = true;
  const photos = face && face.photos > 1 ? `, fitted to ${face.photos} photos` : '';
  const copies = face && face.copies ? ` (${face.copies} copy of another photo left out)` : '';
  $('facts').textContent = face ? `${face.vertices.toLocaleString()} vertices${photos}${copies}` : '';
  setState('loaded');
  requestRender();
}

function setClay(on) {
  if (!head) return;
  head.traverse((o) => {
    if (!o.isMesh) return;
    if (on && !materials.has(o)) { materials.set(o, o.material); o.material = CLAY; }
    if (!on && materials.has(o)) { o.material = materials.get(o); materials.delete(o); }
  });
  $('clay').classList.toggle('on', on);
  requestRender();
}

function setLighting(sh) {  // sh: 9 x [r, g, b] radiance SH in glTF's frame (refine light/full), or null: studio lights
  const button = $('lighting');
  button.hidden = !sh;
  button.onclick = () => usePhotoLight(!button.classList.contains('on'), sh);
  usePhotoLight(Boolean(sh), sh);  // the fit's own lighting first: the head lit as the photo was
}
function usePhotoLight(on, sh) {
  $('lighting').classList.toggle('on', on);
  scene.remove(probe); scene.remove(studio);
  if (on) {
    // three's probe shades albedo/pi x irradiance; the fit's photo is albedo x irradiance: scale by pi.
    probe.sh.coefficients.forEach((c, k) => c.set(...sh[k]).multiplyScalar(Math.PI));
    probe.intensity = 1;
    scene.add(probe);
  } else {
    scene.add(studio);
  }
  requestRender();
}

// ---- expressions ----------------------------------------------------------------------------
function names() {
  const first = meshes[0];
  if (!first) return [];
  return Object.entries(first.morphTargetDictionary).sort((a, b) => a[1] - b[1]).map(([name]) => name);
}
function setWeight(name, value) {
  for (const mesh of meshes) {
    const index = mesh.morphTargetDictionary[name];
    if (index !== undefined) mesh.morphTargetInfluences[index] = value;
  }
  requestRender();
}
function buildSliders() {
  const box = $('sliders');
  box.replaceChildren();
  const list = names();
  $('expressions').hidden = list.length === 0;
  for (const name of list) {
    const label = document.createElement('label');
    const slider = Object.assign(document.createElement('input'), { type: 'range', min: 0, max: 1, step: 0.01 });
    const shown = document.createElement('output');
    slider.dataset.name = name;
    slider.value = meshes[0].morphTargetInfluences[meshes[0].morphTargetDictionary[name]];
    shown.textContent = Number(slider.value).toFixed(2);
    slider.addEventListener('input', () => { setWeight(name, Number(slider.value)); shown.textContent = Number(slider.value).toFixed(2); });
    label.append(Object.assign(document.createElement('span'), { textContent: name }), slider, shown);
    box.append(label);
  }
  setMode('fitted');
}
function setMode(mode) {
  meshes.forEach((mesh, i) => mesh.morphTargetInfluences.forEach((_, k) => {
    mesh.morphTargetInfluences[k] = mode === 'fitted' ? fitted[i][k] : 0;
  }));
  for (const slider of $('sliders').querySelectorAll('input')) {
    const mesh = meshes[0];
    slider.value = mesh.morphTargetInfluences[mesh.morphTargetDictionary[slider.dataset.name]];
    slider.nextSibling.textContent = Number(slider.value).toFixed(2);
  }
  $('fitted').classList.toggle('on', mode === 'fitted');
  $('neutral').classList.toggle('on', mode === 'neutral');
  requestRender();
}

// ---- jobs -------------------------------------------------------------------------------------
let job = null;
function showError(text) {
  $('error').textContent = text; $('error').hidden = !text;
  if (text) setState('error');
}
async function json(response) {
  try { return await response.json(); } catch { return { error: { message: `${response.status} ${response.statusText}` } }; }
}
async function upload(event) {
  event.preventDefault();
  const files = $('photos').files;
  if (!files.length) return;
  const form = new FormData();
  for (const file of files) form.append('photo', file);
  form.append('geometry', $('geometry').value);
  form.append('refine', $('refine').value);
  showError(''); $('go').disabled = true; setState('working');
  let response;
  try { response = await fetch('api/jobs', { method: 'POST', body: form }); } catch { return lost(); }
  const body = await json(response);
  if (!response.ok) { showError(body.error.message); $('go').disabled = false; return; }
  job = body.id;
  $('job').hidden = false; $('downloads').hidden = true;
  poll(job);
}
function lost() { finished(); showError('the page lost its server: is `inference_server web` still running?'); }
async function poll(id) {
  if (id !== job) return;
  let response;
  try { response = await fetch(`api/jobs/${id}`); } catch { return lost(); }
  const body = await json(response);
  if (body.error && !body.state) { finished(); showError(body.error.message); return; }
  $('bar').value = body.progress.fraction;
  $('stage').textContent = body.progress.text || body.progress.stage;
  if (['queued', 'running'].includes(body.state)) { setTimeout(() => poll(id), POLL_MS); return; }
  try { response = await fetch(`api/jobs/${id}/result`); } catch { return lost(); }
  const result = await json(response);
  finished();
  if (!response.ok) { showError(result.error ? result.error.message : `failed (${response.status})`); return; }
  showResult(id, result.result);
}
function finished() { $('job').hidden = true; $('go').disabled = !$('photos').files.length; }
function showResult(id, result) {
  const list = $('files');
  list.replaceChildren();
  for (const [ending, label] of DOWNLOADS) {
    for (const name of result.files.filter((f) => f.endsWith(ending))) {
      const link = Object.assign(document.createElement('a'), { href: `api/jobs/${id}/files/${name}`, textContent: label, download: name });
      const item = document.createElement('li');
      item.append(link);
      list.append(item);
    }
  }
  $('downloads').hidden = false;
  const glb = result.files.find((f) => f.endsWith('.glb'));
  showHead(`api/jobs/${id}/files/${glb}`, result.faces[0]).catch((e) => showError(`the viewer could not load the head: ${e.message}`));
}

// ---- start ------------------------------------------------------------------------------------
function choose(files) {
  $('chosen').textContent = [...files].map((f) => f.name).join(', ');
  $('go').disabled = !files.length;
}
async function start() {
  const info = await json(await fetch('api/info'));
  if (info.error) { showError(info.error.message); return; }
  $('server-line').textContent = `server ${info.server.server_version || '?'} on ${info.server.device || '?'}, Blender ${info.blender || '?'}; ` +
    `up to ${info.max_photos} photos, ${info.max_upload_mb} MB; results kept ${info.keep_minutes} min`;
  for (const name of ['geometry', 'refine']) {
    const select = $(name);
    for (const choice of info.options[name].choices) select.append(new Option(choice, choice, false, choice === info.options[name].default));
    select.title = info.options[name].help;
  }
  if ([...$('geometry').options].some((o) => o.value === 'head')) $('geometry').value = 'head';
}
$('upload').addEventListener('submit', upload);
$('photos').addEventListener('change', () => choose($('photos').files));
const drop = $('drop');
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => { e.preventDefault(); drop.classList.remove('over'); $('photos').files = e.dataTransfer.files; choose($('photos').files); });
$('cancel').addEventListener('click', () => job && fetch(`api/jobs/${job}/cancel`, { method: 'POST' }));
$('reset').addEventListener('click', resetView);
$('clay').addEventListener('click', () => setClay(!$('clay').classList.contains('on')));
$('fitted').addEventListener('click', () => setMode('fitted'));
$('neutral').addEventListener('click', () => setMode('neutral'));
$('filter').addEventListener('input', () => {
  const text = $('filter').value.toLowerCase();
  for (const label of $('sliders').children) label.hidden = !label.textContent.toLowerCase().includes(text);
});
start().then(() => { if (document.body.dataset.state !== 'error') setState('ready'); });
