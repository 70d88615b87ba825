// Get token
const tokenResp = await fetch('http://localhost:8000/auth/token', {
  method: 'POST',
  headers: {'Content-Type': 'application/json'},
  body: JSON.stringify({tenant_id: 'tenant_123', api_key: 'secret'})
});
const {access_token} = await tokenResp.json();

// Start call
const callResp = await fetch('http://localhost:8000/call/start', {
  method: 'POST',
  headers: {
    'Authorization': `Bearer ${access_token}`,
    'Content-Type': 'application/json'
  },
  body: JSON.stringify({
    tenant_id: 'tenant_123',
    language: 'auto'
  })
});
const {call_id} = await callResp.json();

// Connect WebSocket
const ws = new WebSocket(`ws://localhost:8000/ws/${call_id}`);

ws.onmessage = (event) => {
  const data = JSON.parse(event.data);
  console.log(`Received: ${data.type}`);
};

// Send audio
const audioData = btoa(String.fromCharCode(...new Uint8Array(audioBuffer)));
ws.send(JSON.stringify({
  type: 'audio',
  data: audioData
}));
